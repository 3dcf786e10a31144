"""Replacing a damaged journal: in one step, and remembered (SPEC section 2).

The fresh journal is built whole under a temporary name, its "re-read the FN archive" marker and
the record of the recovery in the same transaction, and only then renamed over the damaged file,
whose name was first linked to ``<name>.corrupt-<timestamp>``. So at every instant the journal's
name holds either the damaged file (the next open finds it damaged and starts again) or a fresh
one that asks for the whole FN archive: a failed write or a power cut in between can no longer
leave a healthy empty journal behind, for which ``start_fd = "next"`` would skip every FD the
damaged one still had to deliver.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kktd.journal.integrity import SIDECARS, aside_path, move_sidecars
from kktd.journal.schema import MIGRATIONS

REREAD_KEY = "reread_fn_archive"
RECOVERY_KEY = "recovery"
SHOWN_FOR = 7 * 86400.0  # an unacknowledged recovery stays in the status for a week
FRESH_SUFFIX = ".fresh"


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """A damaged journal replaced by a fresh one: when, where the old file went, and why."""

    at: float
    moved_to: str
    reason: str
    acknowledged_at: float | None = None

    def shown(self, now: float) -> bool:
        """Still for the operator's eyes: not acknowledged and less than a week old."""
        return self.acknowledged_at is None and now - self.at < SHOWN_FOR

    def acknowledged(self, now: float) -> RecoveryRecord:
        return replace(self, acknowledged_at=now)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> RecoveryRecord | None:
        """None for a value this kktd cannot read (it is only ever shown, never acted on)."""
        try:
            data = json.loads(text)
            return cls(
                at=float(data["at"]),
                moved_to=str(data["moved_to"]),
                reason=str(data["reason"]),
                acknowledged_at=None
                if data.get("acknowledged_at") is None
                else float(data["acknowledged_at"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


def replace_damaged(path: Path, now: float, reason: str) -> RecoveryRecord:
    """Keep the damaged `path` as ``<name>.corrupt-<stamp>`` and put a fresh journal in its place.

    Plain sqlite3 and file system calls: run it in a worker thread. Raises `sqlite3.Error` or
    `OSError` (a full disk, typically) with the damaged file still in place and unchanged.
    """
    fresh = path.with_name(path.name + FRESH_SUFFIX)
    _remove_with_sidecars(fresh)  # a build a crash left half done
    target = aside_path(path, now)
    record = RecoveryRecord(at=now, moved_to=str(target), reason=reason)
    build_fresh(fresh, record)
    if path.exists():
        _keep_aside(path, target)
    move_sidecars(path, target)
    fresh.replace(path)
    _sync_directory(path.parent)
    return record


def build_fresh(fresh: Path, record: RecoveryRecord) -> None:
    """An empty journal at the latest schema that asks for the FN archive, in one transaction.

    Rollback-journal mode while it is built: once closed it is one self-contained file, safe to
    rename; the ordinary open switches it to WAL.
    """
    with closing(sqlite3.connect(fresh, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statements in MIGRATIONS:
                for sql in statements:
                    conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS):d}")
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [(REREAD_KEY, record.moved_to), (RECOVERY_KEY, record.to_json())],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise


def _keep_aside(path: Path, target: Path) -> None:
    """A second name for the damaged file, so that it is never missing from `path`."""
    try:
        os.link(path, target)
    except OSError as exc:
        if exc.errno not in {errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}:
            raise
        # a file system without hard links (vfat): rename, with a moment where `path` is absent
        path.rename(target)


def _remove_with_sidecars(path: Path) -> None:
    for name in (path.name, *(path.name + suffix for suffix in SIDECARS)):
        path.with_name(name).unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    """The renames reach the disk before anything is written to the fresh journal."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)
