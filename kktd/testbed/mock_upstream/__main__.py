"""`python -m kktd.testbed.mock_upstream --port 8080`: the mock upstream until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random

from kktd.testbed.mock_upstream.server import MockUpstream
from kktd.testbed.tools import stop_on_signals


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kktd.testbed.mock_upstream",
        description="A mock upstream receipt collector with fault switches (kktd SPEC section 8).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice")
    return parser.parse_args(argv)


async def _serve(host: str, port: int, seed: int) -> None:
    mock = MockUpstream(rng=random.Random(seed).random)
    await mock.start(host, port)
    print(f"mock upstream: POST {mock.url}; GET /_mock/stats; POST /_mock/faults", flush=True)
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        await mock.stop()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.seed))


if __name__ == "__main__":
    main()
