"""Audit records: the summary logged carries sizes and hashes, never the bytes themselves."""

from __future__ import annotations

import hashlib

from kktd.ofd.audit import ExchangeRecord, MemoryAudit, Outcome


def record(outcome: Outcome = "relayed", answer: bytes | None = b"answer") -> ExchangeRecord:
    return ExchangeRecord(
        1_700_000_000.0,
        "9999078900005488",
        b"message",
        answer,
        outcome,
        None,
        0.01,
        0.2,
        0.0301,
    )


def test_the_summary_has_sizes_and_hashes_not_bytes() -> None:
    summary = record().summary()
    assert summary["message_bytes"] == 7
    assert summary["message_sha256"] == hashlib.sha256(b"message").hexdigest()
    assert (summary["answer_bytes"], summary["answer_sha256"]) == (
        6,
        hashlib.sha256(b"answer").hexdigest(),
    )
    assert summary["write_seconds"] == 0.03
    assert not any(isinstance(value, bytes) for value in summary.values())


def test_a_failed_exchange_has_no_answer_in_its_summary() -> None:
    summary = record("timeout", None).summary()
    assert (summary["outcome"], summary["answer_bytes"], summary["answer_sha256"]) == (
        "timeout",
        None,
        None,
    )


async def test_memory_audit_keeps_the_latest_records() -> None:
    audit = MemoryAudit(keep=2)
    for outcome in ("reset", "timeout", "relayed"):
        await audit.record_ofd_exchange(record(outcome))
    assert [r.outcome for r in audit.records] == ["timeout", "relayed"]
