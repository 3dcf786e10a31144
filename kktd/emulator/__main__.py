"""`python -m kktd.emulator`: a Shtrih-M KKT on a pty until Ctrl-C (SPEC section 8)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from kktd.emulator.device import KktDevice
from kktd.emulator.documents import DEFAULT_FN, DocumentGenerator, load_fixtures
from kktd.emulator.pty import PtyEmulator
from kktd.log import configure_logging
from kktd.tools import stop_on_signals


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kktd.emulator",
        description="Emulate a Shtrih-M fiscal register on a pty; prints the port path.",
    )
    parser.add_argument("--link", type=Path, help="a stable symlink to the pty (e.g. /tmp/kkt0)")
    parser.add_argument("--rate", type=float, default=0.0, help="FDs issued per second")
    parser.add_argument("--fn", default=DEFAULT_FN, help="the FN number (16 digits)")
    parser.add_argument("--archive", type=int, default=0, help="FDs in the FN at start")
    parser.add_argument("--fixtures", type=Path, help="FDs to start with, JSON lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document generator")
    parser.add_argument("--baud", type=int, help="throttle the line to this baud rate")
    args = parser.parse_args(argv)
    if len(args.fn) != 16 or not args.fn.isdigit():
        parser.error("--fn must be 16 digits")
    if args.rate < 0 or args.archive < 0 or (args.baud is not None and args.baud <= 0):
        parser.error("--rate, --archive and --baud must not be negative")
    return args


async def serve(args: argparse.Namespace) -> None:
    generator = DocumentGenerator(fn=args.fn, rng=random.Random(args.seed))
    fixtures = load_fixtures(args.fixtures) if args.fixtures else ()
    device = KktDevice(generator, archive=args.archive, documents=fixtures)
    stop = stop_on_signals()
    emulator = PtyEmulator(device, link=args.link, baud=args.baud, rate_per_second=args.rate)
    async with emulator:
        print(emulator.path, flush=True)  # the path is this command's output
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
