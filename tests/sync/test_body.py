"""The request body: built once when the FD is journaled, stored with it, sent as is (issue 14)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from kktd.journal import Journal, Outgoing
from kktd.journal.rows import NewFd
from kktd.journal.schema import MIGRATIONS, migrate
from kktd.sync.body import encode_body
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.upstream import FN, engine_rig

FIELDS = {"doc_kind": "receipt", "total": 20000, "items": [{"name": "Хлеб", "price": 4500}]}
RAW = b"\x01\x02\x03\xff"


def test_the_body_is_the_json_of_the_body_fields_and_depends_on_the_fd_alone() -> None:
    body = encode_body(FN, 7, RAW, FIELDS)
    assert body == encode_body(FN, 7, RAW, dict(FIELDS))  # no clock, no state
    assert json.loads(body) == {"fn": FN, "fd": 7, **FIELDS, "tlv": "AQID/w=="}
    assert "Хлеб".encode() in body  # UTF-8, not \u escapes


async def test_journaling_stores_the_body_and_a_claim_brings_it(journal: Journal) -> None:
    await journal.store(FN, 7, 3, RAW, FIELDS)
    assert await journal.claim_due(10, None, fn=FN) == [
        Outgoing(FN, 7, encode_body(FN, 7, RAW, FIELDS))
    ]


async def test_a_claim_of_many_brings_each_body_with_its_own_key_in_order(journal: Journal) -> None:
    """A claim joins the batch's bodies in one row and splits them again (issue 14): every FD
    must get its own body back, whatever its fields hold (newlines and separators included)."""

    def fields(fd: int) -> dict[str, object]:
        return {**FIELDS, "items": [{"name": f"строка\n{fd},\n\\n", "price": fd}]}

    other = "9999078900000001"
    for fn in (FN, other):  # the other FN sorts first, and is journaled last
        await journal.store_many(
            [NewFd(fn, fd, 3, RAW + bytes([fd]), fields(fd)) for fd in range(1, 61)]
        )
    expected = [
        Outgoing(fn, fd, encode_body(fn, fd, RAW + bytes([fd]), fields(fd)))
        for fn in sorted((FN, other))
        for fd in range(1, 61)
    ]
    assert await journal.claim_due(200, None) == expected
    assert await journal.claim_due(25, None, fn=FN, after=30) == [
        out for out in expected if out.fn == FN and 30 < out.fd <= 55
    ]
    assert await journal.claim_due(10, None, fn=FN, after=60) == []


async def test_a_synced_fd_keeps_no_body(journal: Journal, tmp_path: Path) -> None:
    await journal.store(FN, 7, 3, RAW, FIELDS)
    await journal.store(FN, 8, 3, RAW, FIELDS)
    await journal.mark_synced_many([(FN, 7)], 1.0)
    with closing(sqlite3.connect(tmp_path / "kktd.db")) as conn:
        bodies = dict(conn.execute("SELECT fd, body IS NOT NULL FROM documents"))
    assert bodies == {7: 0, 8: 1}


async def test_a_row_journaled_before_bodies_were_stored_is_sent_with_the_same_body(
    tmp_path: Path, mock: MockUpstream
) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        migrate(conn, MIGRATIONS[:3])  # the schema before the body column
        conn.execute(
            "INSERT INTO documents (fn, fd, doc_type, raw, fields, journaled_at, state,"
            " next_attempt_at) VALUES (?, 5, 3, ?, ?, 0, 'pending', 0)",
            (FN, RAW, json.dumps(FIELDS, ensure_ascii=False)),
        )
    async with await Journal.open(path) as journal:
        await journal.store(FN, 6, 3, RAW, FIELDS)  # one with a body, in the same claim
        claimed = await journal.claim_due(10, None, fn=FN)
        assert claimed == [Outgoing(FN, fd, encode_body(FN, fd, RAW, FIELDS)) for fd in (5, 6)]
        async with engine_rig(journal, mock.url) as rig:
            report = await rig.engine.sync_now()
        assert report.synced == 2
    assert mock.state.accepted[(FN, 5)]["tlv"] == "AQID/w=="


async def test_an_fn_holding_the_claims_separator_is_claimed_whole(journal: Journal) -> None:
    """The joined claim splits the keys on commas: an FN that holds one (as garbled as a KKT may
    send it) must not shift them, it takes the row by row claim."""
    odd = "9999,0789"
    await journal.store_many([NewFd(odd, fd, 3, RAW, FIELDS) for fd in (1, 2)])
    assert await journal.claim_due(10, None) == [
        Outgoing(odd, fd, encode_body(odd, fd, RAW, FIELDS)) for fd in (1, 2)
    ]
