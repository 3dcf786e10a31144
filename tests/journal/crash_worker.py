"""Crash-test worker: journals FDs as fast as it can until it is killed.

``python crash_worker.py DB_PATH`` prints ``ready`` once running, then ``committed <fd>`` after
each `Journal.store` has returned. Like the poller it resumes after the journal's cursor, so every
run continues the FN's sequence. `document` gives each FD's exact bytes and fields for the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import structlog

from kktd.journal import Journal

FN = "9999078900005488"
DOC_TYPE = 3


def document(fd: int) -> tuple[bytes, dict[str, Any]]:
    """FD `fd`'s raw bytes (32 to 224 of them, varying) and decoded fields."""
    raw = hashlib.sha256(fd.to_bytes(4, "little")).digest() * (1 + fd % 7)
    return raw, {"fd": fd, "total": fd * 100, "items": [{"name": f"товар {fd}"}]}


async def run(path: Path) -> None:
    journal = await Journal.open(path)
    fd = (await journal.cursor(FN) or 0) + 1
    while True:
        raw, fields = document(fd)
        await journal.store(FN, fd, DOC_TYPE, raw, fields)
        print(f"committed {fd}", flush=True)
        fd += 1


def main() -> None:
    # stdout is the report channel: logs go to stderr, warnings and worse only
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    # "ready" before the open, so the kill can also land mid-open or mid-migration
    print("ready", flush=True)
    asyncio.run(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
