"""Where the KKT is: `kkt.port` read as a serial device path or a `tcp://HOST[:PORT]` address.

Pure: no sockets, no name lookups (a host name is checked for shape only; it is resolved when the
link connects, so a till that boots before its DNS does not fail its config check). The config
loader explains a bad value with the messages raised here; the link picks its transport from the
parsed address. SPEC section 1: TCP port 7778 when none is given.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_TCP_PORT = 7778
TCP_PREFIX = "tcp://"
EXAMPLES = '"/dev/ttyACM0", "/dev/ttyS0" or "tcp://192.168.137.111:7778"'

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_WINDOWS_PORT = re.compile(r"(?i)com(\d+):?")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d+")


class AddressError(ValueError):
    """`kkt.port` is neither a device path nor a TCP address; the message says what was meant."""


@dataclass(frozen=True, slots=True)
class SerialAddress:
    path: str
    kind: Literal["serial"] = "serial"

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str  # a name, an IPv4 address or an IPv6 address (without brackets)
    port: int = DEFAULT_TCP_PORT
    kind: Literal["tcp"] = "tcp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{TCP_PREFIX}{host}:{self.port}"


KktAddress = SerialAddress | TcpAddress


def parse_address(value: str) -> KktAddress:
    """`kkt.port` as written in the config -> where to find the KKT; `AddressError` if neither."""
    if not value:
        raise AddressError(
            f"expected a non-empty device path or tcp://HOST[:PORT] (e.g. {EXAMPLES})"
        )
    if value[: len(TCP_PREFIX)].lower() == TCP_PREFIX:
        return _tcp(value[len(TCP_PREFIX) :])
    if scheme := _SCHEME.match(value):
        raise AddressError(
            f'"{scheme.group(1)}://" is not a way to reach a KKT; expected a device path or'
            f" tcp://HOST[:PORT] (e.g. {EXAMPLES})"
        )
    if windows := _WINDOWS_PORT.fullmatch(value):
        number = int(windows.group(1))
        raise AddressError(
            f"{value} is a Windows port name; on Linux COM{number} is /dev/ttyS{max(0, number - 1)}"
        )
    if _HOST_PORT.fullmatch(value) and not value.startswith("/"):
        raise AddressError(f"a network address needs the tcp:// prefix: tcp://{value}")
    if not value.startswith("/"):
        raise AddressError(
            f"expected an absolute device path or tcp://HOST[:PORT] (e.g. {EXAMPLES})"
        )
    return SerialAddress(value)


def describe(address: KktAddress, baudrate: int) -> str:
    """One phrase for an operator: which transport kktd will use, and where."""
    if isinstance(address, TcpAddress):
        return f"TCP to {address.host} port {address.port} (baud rate does not apply)"
    return f"serial port {address.path} at {baudrate} baud"


def _tcp(rest: str) -> TcpAddress:
    """HOST, HOST:PORT, [V6] or [V6]:PORT (what follows tcp://)."""
    for mark, what in (("/", "path"), ("?", "query"), ("#", "fragment"), ("@", "user name")):
        if mark in rest:
            raise AddressError(f"a KKT address has no {what}: expected tcp://HOST[:PORT]")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise AddressError("an IPv6 address needs its closing bracket: tcp://[::1]:7778")
        _ipv6(host)
        if tail and not tail.startswith(":"):
            raise AddressError(f"expected :PORT after [{host}], got {tail!r}")
        return TcpAddress(host, _port(tail[1:]) if tail else DEFAULT_TCP_PORT)
    if rest.count(":") > 1:
        raise AddressError(
            f"an IPv6 address goes in brackets, the port after them (tcp://[::1]:7778),"
            f" got tcp://{rest}"
        )
    host, colon, port = rest.partition(":")
    _host(host)
    return TcpAddress(host, _port(port) if colon else DEFAULT_TCP_PORT)


def _ipv6(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise AddressError(f"not an IPv6 address in brackets: [{host}]") from None


def _host(host: str) -> None:
    if not host:
        raise AddressError("expected a host after tcp:// (a name or an address)")
    if host.replace(".", "").isdigit():  # all digits and dots: meant as an IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise AddressError(f"not an IPv4 address: {host}") from None
        return
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(
            f"not a host name: {host} (letters, digits, hyphens and dots; an IPv6 address"
            " goes in brackets)"
        )


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise AddressError(f"expected a TCP port from 1 to 65535 after the host, got {text!r}")
    return int(text)
