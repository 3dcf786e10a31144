"""The OFD leg of the relay: one TCP connection per message, the answer read by its header.

The message goes out unchanged; the answer is a 30-byte session header and the body length it
announces, nothing more (the OFD may keep the connection open). Every way this can fail ends in
an `OfdError` named for what the relay does about it; none of them says anything about the FN's
message, which stays in the FN to be offered again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from kktd.kkt.ofd_protocol import HEADER_SIZE, MAX_MESSAGE, SessionError, SessionHeader

CONNECT_TIMEOUT = 10.0

OfdFailure = Literal["unreachable", "timeout", "reset", "malformed"]


class OfdError(Exception):
    """The OFD was not reached, or did not answer with a whole, well-formed session message."""

    def __init__(self, failure: OfdFailure, detail: str) -> None:
        self.failure: OfdFailure = failure
        self.detail = detail
        super().__init__(f"{failure}: {detail}")


async def exchange(
    host: str,
    port: int,
    message: bytes,
    *,
    # The OFD's answer time, as configured (ofd.timeout); not the caller's deadline.
    timeout: float,  # noqa: ASYNC109
    connect_timeout: float = CONNECT_TIMEOUT,
) -> bytes:
    """Send `message` to the OFD and return its answer (header and body), byte for byte."""
    try:
        async with asyncio.timeout(min(connect_timeout, timeout)):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise OfdError("unreachable", f"no connection to {host}:{port} in time") from None
    except OSError as exc:
        raise OfdError("unreachable", f"{host}:{port}: {exc.strerror or exc}") from None
    received = 0
    try:
        async with asyncio.timeout(timeout):
            writer.write(message)
            await writer.drain()
            head = await reader.readexactly(HEADER_SIZE)
            received = HEADER_SIZE
            header = _answer_header(head)
            body = await reader.readexactly(header.body_length)
    except TimeoutError:
        writer.transport.abort()
        raise OfdError("timeout", f"no whole answer in {timeout:g} s") from None
    except asyncio.IncompleteReadError as exc:
        writer.transport.abort()
        got = received + len(exc.partial)
        raise OfdError("reset", f"the OFD closed the connection after {got} bytes") from None
    except ConnectionError as exc:
        writer.transport.abort()
        raise OfdError("reset", f"connection lost: {exc.strerror or exc}") from None
    except SessionError as exc:
        writer.transport.abort()
        raise OfdError("malformed", str(exc)) from None
    except asyncio.CancelledError:
        writer.transport.abort()  # the relay is stopping: no connection left behind
        raise
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return head + body


def _answer_header(head: bytes) -> SessionHeader:
    """The answer's header, if the FN can take an answer of the length it announces."""
    header = SessionHeader.decode(head)
    if HEADER_SIZE + header.body_length > MAX_MESSAGE:
        raise SessionError(f"a {header.body_length}-byte body cannot be written to the FN")
    return header
