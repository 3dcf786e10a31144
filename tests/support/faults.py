"""Real faults for the journal: a small file system that fills up (a tmpfs, root only), and a
damaged b-tree in a live journal file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def tmpfs(directory: Path, size: str) -> AsyncIterator[str | None]:
    """A small tmpfs at `directory`; yields None when mounted, else why it could not be."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}"
        return
    try:
        yield None
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(directory)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    with path.open("wb", buffering=0) as filler:
        try:
            while True:
                written += filler.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return written


def damage_table(path: Path, table: str) -> None:
    """Point `table`'s b-tree at one of its indexes' root page, as a bad page or a stray write
    would: SQLite reports the file malformed as soon as the table is next read, also to a kktd
    that has it open (the schema version changes under it)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        index_root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        ).fetchone()[0]
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (index_root, table))
        conn.execute(f"PRAGMA schema_version = {version + 1:d}")
