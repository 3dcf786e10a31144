"""The request body: built once when the FD is journaled, stored with it, sent as is (issue 14)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from kktd.journal import Journal
from kktd.journal.schema import MIGRATIONS, migrate
from kktd.sync.body import encode_body
from kktd.sync.client import build_body, request_body
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
    [claimed] = await journal.claim_due(10, None, fn=FN)
    assert claimed.body == encode_body(FN, 7, RAW, FIELDS)
    stored = await journal.get(FN, 7)
    assert stored is not None
    assert json.loads(request_body(claimed)) == build_body(stored)


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
        [claimed] = await journal.claim_due(10, None, fn=FN)
        assert claimed.body is None
        assert claimed.fields == FIELDS  # what the body is built from at delivery
        assert request_body(claimed) == encode_body(FN, 5, RAW, FIELDS)
        async with engine_rig(journal, mock.url) as rig:
            report = await rig.engine.sync_now()
        assert report.synced == 1
    assert mock.state.accepted[(FN, 5)]["tlv"] == "AQID/w=="
