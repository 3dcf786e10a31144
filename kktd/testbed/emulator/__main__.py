"""`kktd emulator`: a Shtrih-M KKT on a pty (or a TCP port) until Ctrl-C (SPEC section 8)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from kktd.lifecycle.log import configure_logging
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DEFAULT_FN, DocumentGenerator, load_fixtures
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.emulator.serving import Serving
from kktd.testbed.emulator.tcp import TcpEmulator
from kktd.testbed.tools import stop_on_signals


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kktd emulator",
        description=(
            "Emulate a Shtrih-M fiscal register on a pty, or on a TCP port with --tcp;"
            " prints the kkt.port value that reaches it."
        ),
    )
    parser.add_argument("--link", type=Path, help="a stable symlink to the pty (e.g. /tmp/kkt0)")
    parser.add_argument(
        "--tcp", type=int, metavar="PORT", help="serve TCP on this port instead (0: any free)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on with --tcp")
    parser.add_argument("--rate", type=float, default=0.0, help="FDs issued per second")
    parser.add_argument("--fn", default=DEFAULT_FN, help="the FN number (16 digits)")
    parser.add_argument("--archive", type=int, default=0, help="FDs in the FN at start")
    parser.add_argument("--fixtures", type=Path, help="FDs to start with, JSON lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document generator")
    parser.add_argument("--baud", type=int, help="throttle the line to this baud rate")
    parser.add_argument(
        "--busy-every", type=int, default=0, metavar="N", help="answer every N-th command busy"
    )
    args = parser.parse_args(argv)
    if len(args.fn) != 16 or not args.fn.isdigit():
        parser.error("--fn must be 16 digits")
    if args.rate < 0 or args.archive < 0 or (args.baud is not None and args.baud <= 0):
        parser.error("--rate, --archive and --baud must not be negative")
    if args.busy_every < 0 or (args.tcp is not None and not 0 <= args.tcp <= 65535):
        parser.error("--busy-every must not be negative, --tcp must be a port from 0 to 65535")
    if args.tcp is not None and args.link is not None:
        parser.error("--link names a pty; with --tcp there is none")
    return args


async def serve(args: argparse.Namespace) -> None:
    generator = DocumentGenerator(fn=args.fn, rng=random.Random(args.seed))
    fixtures = load_fixtures(args.fixtures) if args.fixtures else ()
    device = KktDevice(generator, archive=args.archive, documents=fixtures)
    stop = stop_on_signals()
    emulator: Serving
    if args.tcp is not None:
        emulator = TcpEmulator(
            device, host=args.host, port=args.tcp, baud=args.baud, rate_per_second=args.rate
        )
    else:
        emulator = PtyEmulator(device, link=args.link, baud=args.baud, rate_per_second=args.rate)
    emulator.busy_every = args.busy_every
    async with emulator:
        print(emulator.port, flush=True)  # the kkt.port value is this command's output
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError) as exc:
        print(f"kktd emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
