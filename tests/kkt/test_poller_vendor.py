"""A second vendor's KKT beside Shtrih-M's (issue 15): the poller takes any `KktConnection` and
`Kkt`, and journals what they read without a byte of the Shtrih-M protocol in between."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import pytest

from kktd.config import KktConfig
from kktd.journal import Journal
from kktd.kkt.commands import FnStatus, OfdStatus
from kktd.kkt.link import LinkState
from kktd.kkt.poller import Poller
from kktd.testbed.emulator.documents import DocumentGenerator, EmulatedDocument
from tests.support.clock import FakeClock


class OtherLine:
    """The line to another vendor's KKT: connected on the first ask, nobody else on it."""

    def __init__(self) -> None:
        self.connects = 0
        self.held = 0

    @property
    def connected(self) -> bool:
        return self.connects > 0

    @property
    def state(self) -> LinkState:
        return LinkState(self.connected, None, None, None, 0.0)

    async def connect(self) -> None:
        self.connects += 1

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self.held += 1
        yield


class OtherKkt:
    """Another vendor's protocol: the same answers, got some other way (here: from a list)."""

    def __init__(self, documents: list[EmulatedDocument], fn: str) -> None:
        self.documents = {doc.fd: doc for doc in documents}
        self.fn = fn
        self.beat = lambda: None

    async def fn_status(self) -> FnStatus:
        return FnStatus(4, 0, 0, False, 0, datetime(2026, 12, 1), self.fn, max(self.documents))

    async def ofd_status(self) -> OfdStatus:
        return OfdStatus(0, False, 0, 0, None)

    async def read_document(self, fn: str, fd: int) -> tuple[int, bytes]:
        assert fn == self.fn
        doc = self.documents[fd]
        return doc.doc_type, doc.raw


async def test_the_poller_journals_another_vendors_fds_as_they_were_read(tmp_path: Path) -> None:
    generator = DocumentGenerator(rng=random.Random(3))
    documents = [generator.next_document() for _ in range(5)]
    line, kkt = OtherLine(), OtherKkt(documents, generator.fn)
    journal = await Journal.open(tmp_path / "kktd.db")
    try:
        poller = Poller(
            line,
            journal,
            KktConfig(port="/dev/null", start_fd="first"),
            on_journaled=lambda: None,
            kkt=kkt,
            monotonic=FakeClock(),
        )
        assert await poller.poll() == 5
        for doc in documents:
            entry = await journal.get(generator.fn, doc.fd)
            assert entry is not None
            assert (entry.doc_type, entry.raw) == (doc.doc_type, doc.raw)
            assert entry.fields == doc.record
        assert line.connects == 1
        assert line.held > 0  # every read under the line's exclusive hold
    finally:
        await journal.close()


def test_a_connection_that_is_not_shtrih_ms_link_must_bring_its_kkt(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="needs its own Kkt"):
        Poller(
            OtherLine(),
            Journal(tmp_path / "kktd.db"),
            KktConfig(port="/dev/null"),
            on_journaled=lambda: None,
        )
