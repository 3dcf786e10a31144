"""The FN side of the relay: its message out (FF30, FF31), the OFD's answer in (FF32, FF33).

Each sequence holds the serial link for its whole length, so the poller's commands never land
between two blocks; the link is released while the OFD is being waited for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from kktd.kkt.commands import Command, OfdStatus, PayloadError, Response
from kktd.kkt.frames import ProtocolError
from kktd.kkt.link import KktError, KktLink
from kktd.kkt.ofd_protocol import (
    EXCHANGE_MODE_FIELD,
    MAX_READ_BLOCK,
    MAX_WRITE_BLOCK,
    OFD_PORT_FIELD,
    OFD_SERVER_FIELD,
    AnswerBlockSize,
    BufferStatus,
    OfdCommand,
    ReadBlock,
    StartAnswer,
    TableField,
    WriteBlock,
    blocks,
)
from kktd.kkt.transport import LinkError

BUSY_TRIES = 5
BUSY_PAUSE = 0.5
# What the serial side can raise: the line, an error byte, an answer that does not decode.
FN_TROUBLE = (LinkError, KktError, ProtocolError)


@dataclass(frozen=True, slots=True)
class KktOfdSettings:
    """The KKT's own OFD settings as it reports them (None: the firmware would not say)."""

    exchange_mode: int | None  # table 21 field 2; 0 = exchange through the driver (us)
    server: str | None  # table 19 fields 1 and 2: the OFD the KKT is set up for


class FnBuffer:
    """The FN's OFD buffer over a shared `KktLink`."""

    def __init__(self, link: KktLink, *, busy_pause: float = BUSY_PAUSE) -> None:
        self.link = link
        self.busy_pause = busy_pause
        self.pending_bytes: int | None = None  # FF30's last word

    async def take_message(self) -> bytes | None:
        """The message on offer, read whole; None when the FN offers nothing."""
        async with self.link.exclusive():
            status = BufferStatus.decode((await self._request(OfdCommand.BUFFER_STATUS)).data)
            self.pending_bytes = status.pending
            if status.pending == 0:
                return None
            size = min(status.block_size or MAX_READ_BLOCK, MAX_READ_BLOCK)
            parts = []
            for offset, count in blocks(status.pending, size):
                block = ReadBlock(offset, count).encode()
                data = (await self._request(OfdCommand.READ_BLOCK, block)).data
                if len(data) != count:
                    raise PayloadError(f"FF31 at {offset}: {len(data)} bytes, asked for {count}")
                parts.append(data)
        return b"".join(parts)

    async def write_answer(self, answer: bytes) -> None:
        """FF32 with the answer's size, then FF33 blocks; `KktError` if the FN refuses it."""
        async with self.link.exclusive():
            start = StartAnswer(len(answer)).encode()
            reply = await self._request(OfdCommand.START_ANSWER, start)
            block_size = AnswerBlockSize.decode(reply.data).block_size
            size = min(block_size or MAX_WRITE_BLOCK, MAX_WRITE_BLOCK)
            for offset, count in blocks(len(answer), size):
                block = WriteBlock(offset, answer[offset : offset + count]).encode()
                await self._request(OfdCommand.WRITE_BLOCK, block)

    async def backlog(self) -> OfdStatus:
        """FF39: the FN's own count of documents the OFD has not confirmed."""
        return OfdStatus.decode((await self._request(Command.OFD_STATUS)).data)

    async def settings(self) -> KktOfdSettings:
        mode = await self._table(TableField(*EXCHANGE_MODE_FIELD))
        server = await self._table(TableField(*OFD_SERVER_FIELD))
        port = await self._table(TableField(*OFD_PORT_FIELD))
        host = None if server is None else server.split(b"\x00")[0].decode("cp1251", "replace")
        if host is not None and port is not None and len(port) >= 2:
            host = f"{host}:{int.from_bytes(port[:2], 'little')}"
        return KktOfdSettings(mode[0] if mode else None, host)

    async def _table(self, field: TableField) -> bytes | None:
        try:
            return (await self._request(OfdCommand.READ_TABLE, field.encode())).data
        except FN_TROUBLE:
            return None  # older firmware: the setting stays unknown, relaying works anyway

    async def _request(self, cmd: int, data: bytes = b"") -> Response:
        """One command; "printing in progress" is retried a few times, shortly."""
        for _ in range(BUSY_TRIES - 1):
            try:
                return await self.link.request(cmd, data)
            except KktError as exc:
                if not exc.busy:
                    raise
            await asyncio.sleep(self.busy_pause)
        return await self.link.request(cmd, data)
