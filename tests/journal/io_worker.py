"""I/O-error worker: a real write error (EFBIG under RLIMIT_FSIZE) in the middle of a journal.

``python io_worker.py DB_PATH`` journals five FDs, lowers the process's file size limit just
above the -wal's size (SIGXFSZ ignored, so write() fails with EFBIG and SQLite reports
SQLITE_IOERR_WRITE), tries to journal a large FD, lifts the limit and opens the journal again as
`keep_open` would. It prints one JSON object of what it saw. A subprocess: the limit would
otherwise apply to every file the test run writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from kktd.journal import Journal, JournalError

FN = "9999078900005488"


async def run(path: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with await Journal.open(path) as journal:
        for fd in range(1, 6):
            await journal.store(FN, fd, 3, b"x" * 1000, {})
        wal = path.with_name(path.name + "-wal").stat().st_size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal + 100, hard))
        try:
            await journal.store(FN, 6, 3, b"y" * 65536, {})
        except JournalError as exc:
            seen["raised"] = [type(exc).__name__, str(exc)]
        unavailable = journal.unavailable()
        seen["unavailable"] = None if unavailable is None else str(unavailable)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # the disk works again
        await journal.open_now()
        seen["reopened"] = journal.unavailable() is None
        seen["recovered_from"] = None if journal.recovered_from is None else "moved"
        seen["cursor"] = await journal.cursor(FN)
        seen["stored"] = await journal.store(FN, 6, 3, b"y" * 65536, {})
    return seen


def main() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    print(json.dumps(asyncio.run(run(Path(sys.argv[1])))), flush=True)


if __name__ == "__main__":
    main()
