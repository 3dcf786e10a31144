"""The KKT link: requests by command, exclusive sequences, reconnect with backoff, link state.

One `KktLink` owns the byte pipe to the KKT: a serial port or a TCP connection, chosen by
`kkt.port` (`open_transport`); nothing above this module knows which. Callers ask
`request(cmd, data)` and get the answer's data or a `KktError` carrying the KKT's error byte by
name; `exclusive()` keeps the link for a sequence of commands (an FD read: FF3A then FF3B …
until 08) that must not be interleaved. When the port vanishes, the connection drops or the KKT
stops answering, the link closes the pipe and reopens it no sooner than the backoff allows (1 s
doubling to 30 s): `request` then fails fast with `LinkDown` and the caller (the poller) decides
how to wait, so it can keep beating meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import structlog

from kktd.kkt.address import SerialAddress, parse_address
from kktd.kkt.commands import (
    BUSY_ERRORS,
    NO_PASSWORD,
    Command,
    DeviceType,
    Response,
    answer_timeout,
    encode_request,
    error_name,
)
from kktd.kkt.frames import ProtocolError
from kktd.kkt.handshake import Discarded
from kktd.kkt.noise import LineNoise
from kktd.kkt.serial_port import SerialTransport
from kktd.kkt.tcp import TCP_BYTE_TIMEOUT, TCP_CONTROL_TIMEOUT, TcpTransport
from kktd.kkt.transport import (
    BYTE_TIMEOUT,
    CONTROL_TIMEOUT,
    ExchangeError,
    LinkDown,
    LinkError,
    Transport,
)
from kktd.sync.backoff import Backoff

log = structlog.get_logger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# Busy (50/58, printing): ask again at once (a KKT busy for one command is ready for the next),
# then after 10 ms, doubling to 200 ms (a print lasts a second or two), until this much waiting;
# then the caller's error handling takes over. SPEC section 1.
BUSY_FIRST = 0.01
BUSY_MAX = 0.2
IDENTIFY_BUSY_WAIT = 5.0

Opener = Callable[[str, int, float, float, Callable[[Discarded], None]], Awaitable[Transport]]


def busy_delays(budget: float) -> Iterator[float]:
    """The pauses between busy retries: 0, 10, 20, 40, 80, 160, 200, 200 … ms, `budget` in all."""
    yield 0.0
    backoff = Backoff(BUSY_FIRST, BUSY_MAX, "none")
    waited = 0.0
    while waited < budget:
        delay = min(backoff.record_failure(), budget - waited)
        waited += delay
        yield delay


async def open_transport(
    port: str,
    baudrate: int,
    byte_timeout: float,
    control_timeout: float,
    on_discard: Callable[[Discarded], None],
) -> Transport:
    """The pipe `kkt.port` names: a serial device, or a TCP connection for tcp://HOST:PORT."""
    address = parse_address(port)
    if isinstance(address, SerialAddress):
        return await SerialTransport.open(
            address.path,
            baudrate,
            byte_timeout=byte_timeout,
            control_timeout=control_timeout,
            on_discard=on_discard,
        )
    return await TcpTransport.open(
        address.host,
        address.port,
        byte_timeout=byte_timeout,
        control_timeout=control_timeout,
        on_discard=on_discard,
    )


class KktError(Exception):
    """The KKT answered with a non-zero error byte."""

    def __init__(self, cmd: int, code: int) -> None:
        self.cmd = cmd
        self.code = code
        self.name = error_name(code)
        super().__init__(f"command {cmd:#x} failed: {self.name} ({code:#04x})")

    @property
    def busy(self) -> bool:
        """Printing in progress: worth retrying shortly."""
        return self.code in BUSY_ERRORS


@dataclass(frozen=True, slots=True)
class LinkState:
    connected: bool
    since: float | None  # wall-clock time of the last connect or disconnect
    last_error: str | None
    device: DeviceType | None
    reconnect_in: float  # seconds until the next attempt is allowed (0 when connected or due)


class KktLink:
    """The link to one KKT, shared by every caller through `exclusive()`.

    Timeouts left as None take the transport's own: a serial line's, or the longer ones a
    network needs (`tcp.py`).
    """

    def __init__(
        self,
        port: str,
        baudrate: int,
        *,
        password: int = 30,
        byte_timeout: float | None = None,
        control_timeout: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        opener: Opener = open_transport,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.password = password
        self.transport_kind = parse_address(port).kind
        serial = self.transport_kind == "serial"
        default_byte, default_control = (
            (BYTE_TIMEOUT, CONTROL_TIMEOUT) if serial else (TCP_BYTE_TIMEOUT, TCP_CONTROL_TIMEOUT)
        )
        self._byte_timeout = default_byte if byte_timeout is None else byte_timeout
        self._control_timeout = default_control if control_timeout is None else control_timeout
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep
        self._opener = opener
        self._transport: Transport | None = None
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None
        self._device: DeviceType | None = None
        self._since: float | None = None
        self._last_error: str | None = None
        self._retry_at = float("-inf")
        self._backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX, "none")
        self.noise = LineNoise(port, monotonic=monotonic)

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def state(self) -> LinkState:
        reconnect_in = 0.0 if self.connected else max(0.0, self._retry_at - self._monotonic())
        return LinkState(self.connected, self._since, self._last_error, self._device, reconnect_in)

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Hold the link for a sequence of requests; requests inside it do not wait on it."""
        return _Hold(self)

    async def connect(self) -> DeviceType:
        """Open the port if it is closed (ENQ probe and FC); `LinkDown` if not possible yet."""
        async with self.exclusive():
            await self._ensure_open()
            assert self._device is not None
            return self._device

    async def request(
        self,
        cmd: int,
        data: bytes = b"",
        *,
        password: bool = True,
        # The protocol's answer timeout (how long the KKT may take), not a deadline on the call.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Response:
        """One command and its answer; `KktError` for an error byte, `LinkError` for the line."""
        async with _Hold(self):
            transport = await self._ensure_open()
            response = await self._exchange(transport, cmd, data, password, timeout)
        if response.error:
            raise KktError(cmd, response.error)
        return response

    async def requests(
        self,
        cmd: int,
        data: bytes = b"",
        *,
        again: Callable[[Response], bool],
        then: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the answer timeout, as in `request`
    ) -> list[Response]:
        """The command, then command `then` (without data; by default the same request again)
        while `again(answer)` says so; every answer, error or not.

        For an FD: FF3A, then FF3B until 08. The exchanges follow each other inside the
        transport (each whole, ENQ first), and the caller wakes once for the run. Error bytes
        are the caller's to read (no `KktError`); `LinkError` for the line, as `request`.
        """
        async with _Hold(self):
            transport = await self._ensure_open()
            return await self._exchanges(
                transport, cmd, data, True, timeout, again=again, then=then
            )

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # --- internals ---

    async def _exchange(
        self,
        transport: Transport,
        cmd: int,
        data: bytes,
        password: bool,
        answer_wait: float | None,
    ) -> Response:
        answers = await self._exchanges(transport, cmd, data, password, answer_wait, again=_once)
        return answers[0]

    async def _exchanges(
        self,
        transport: Transport,
        cmd: int,
        data: bytes,
        password: bool,
        answer_wait: float | None,
        *,
        again: Callable[[Response], bool],
        then: int | None = None,
    ) -> list[Response]:
        pwd = self.password if password and cmd not in NO_PASSWORD else None
        body = encode_request(cmd, pwd, data)
        wait = answer_wait or answer_timeout(cmd)
        follow = None  # the request after the first: the same one unless `then` says
        if then is not None:
            then_pwd = self.password if password and then not in NO_PASSWORD else None
            follow = encode_request(then, then_pwd)
            wait = answer_wait or max(wait, answer_timeout(then))
        try:
            if again is _once:
                answers = [await transport.exchange(body, answer_timeout=wait)]
            else:
                answers = await transport.exchanges(
                    body, answer_timeout=wait, again=again, then=follow
                )
        except LinkDown as exc:
            self._down(str(exc))
            raise
        except ExchangeError as exc:
            if exc.reason in ("no_link", "wedged"):
                self._down(str(exc))
                raise LinkDown(f"the KKT stopped answering: {exc}") from exc
            self._last_error = str(exc)
            raise
        for _ in answers:
            self.noise.clean_exchange()
        return answers

    async def _ensure_open(self) -> Transport:
        if self._transport is not None:
            return self._transport
        left = self._retry_at - self._monotonic()
        if left > 0:
            raise LinkDown(f"reconnecting in {left:.1f} s: {self._last_error}")
        try:
            transport = await self._opener(
                self.port, self.baudrate, self._byte_timeout, self._control_timeout, self._discard
            )
        except LinkDown as exc:
            self._attempt_failed(str(exc))
            raise
        try:
            device = await self._identify(transport)
        except (LinkError, KktError, ProtocolError) as exc:
            transport.close()
            self._attempt_failed(f"no KKT on {self.port}: {exc}")
            raise LinkDown(f"no KKT on {self.port}: {exc}") from exc
        self._transport = transport
        self._device = device
        self._since = self._wall()
        self._backoff.record_success()
        log.info(
            "kkt.connected",
            port=self.port,
            transport=self.transport_kind,
            model=device.model,
            name=device.name,
        )
        return transport

    async def _identify(self, transport: Transport) -> DeviceType:
        """FC: the exchange starts with the ENQ probe, which also drains a pending answer."""
        response = await self._exchange(transport, Command.DEVICE_TYPE, b"", False, None)
        for delay in busy_delays(IDENTIFY_BUSY_WAIT):
            if response.error not in BUSY_ERRORS:
                break
            await self._sleep(delay)  # printing: a KKT mid-receipt is still a KKT
            response = await self._exchange(transport, Command.DEVICE_TYPE, b"", False, None)
        if response.error:
            raise KktError(Command.DEVICE_TYPE, response.error)
        return DeviceType.decode(response.data)

    def _attempt_failed(self, error: str) -> None:
        self._transport = None
        self._last_error = error
        retry_in = self._backoff.record_failure()
        self._retry_at = self._monotonic() + retry_in
        log.warning("kkt.connect_failed", port=self.port, error=error, retry_in=retry_in)

    def _down(self, error: str) -> None:
        if self._transport is None:
            return  # still connecting: `_ensure_open` reports the attempt
        self._transport.close()
        self._transport = None
        self._since = self._wall()
        self._last_error = error
        retry_in = self._backoff.record_failure()
        self._retry_at = self._monotonic() + retry_in
        log.warning("kkt.disconnected", port=self.port, error=error, retry_in=retry_in)

    def _discard(self, what: Discarded) -> None:
        if what.kind == "stale_answer":
            log.info("kkt.stale_answer_drained", body=what.data[:16].hex(" "))
            return
        if what.kind == "stray_ff":
            return  # the KKT's own quirk over USB and RNDIS/TCP, not a sign of a bad line
        self.noise.seen(what)


def _once(_: Response) -> bool:
    return False


class _Hold:
    """`KktLink.exclusive()`: the link's lock, taken once per task (nested holds pass through).

    A plain class rather than an `asynccontextmanager`: every request of an FD read enters one,
    and a generator-based context manager costs a generator and several frames each time.
    """

    __slots__ = ("_link", "_took")

    def __init__(self, link: KktLink) -> None:
        self._link = link
        self._took = False

    async def __aenter__(self) -> None:
        link = self._link
        task = asyncio.current_task()
        if task is not None and task is link._owner:
            return
        await link._lock.acquire()
        link._owner = task
        self._took = True

    async def __aexit__(self, *exc: object) -> None:
        if self._took:
            self._took = False
            self._link._owner = None
            self._link._lock.release()
