"""Who may use the local API (SPEC section 6): this till's own tools, never a web page.

A browser on the till reaches a loopback port too. A page can rebind a name of its own to
127.0.0.1 and then read the API as same-origin (DNS rebinding: its requests carry that foreign
name as `Host`), or post a form to it (CSRF: the request carries an `Origin`). kktd's client,
curl and Prometheus send the listener's own name and never an `Origin`, so both are refused
before any handler runs.

The API token, when configured, guards what another local user must not do or read: every
request that changes something (every method but GET and HEAD) and every read of receipts.
The client uses the same rule to decide where to send it, so the token never goes out on a
status or metrics call that anything squatting on the port could collect.

Pure functions of strings: the middleware and the client both use them.
"""

from __future__ import annotations

from collections.abc import Mapping

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
# reads that hand out receipts (the raw TLV can hold a buyer's phone or e-mail, tag 1008)
RECEIPT_READS = ("/v1/documents", "/v1/export", "/v1/dlq")
# headers only browsers send: `Origin` on cross-site and on every non-GET request, `Sec-Fetch-Site`
# on every request of current browsers (the latter refuses even a GET an <img> tag makes)
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site")
# who runs a client command that the journal audits (`kktd skip`): the user as the client sees it
OPERATOR_HEADER = "X-Kktd-Operator"
HTTP_PORT = 80
QUOTED = 80  # characters of a refused header quoted back


def needs_token(method: str, path: str) -> bool:
    """Whether a request needs the API token (when one is configured)."""
    if method.upper() not in SAFE_METHODS:
        return True
    return any(path == read or path.startswith(read + "/") for read in RECEIPT_READS)


def refusal(headers: Mapping[str, str], sockname: object) -> str | None:
    """Why a request must not reach a handler, or None when it may.

    `headers`: the request's headers (case-insensitive mapping). `sockname`: the listening side
    of its connection: ``(address, port, ...)`` for TCP, a path for a unix socket.
    """
    for name in BROWSER_HEADERS:
        if name in headers:
            return f"a request with {name}: {_quote(headers[name])} comes from a web browser"
    host = headers.get("Host")
    if host is None:
        return "a request without a Host header"
    if not host_allowed(host, sockname):
        return f"Host {_quote(host)} is not this API's own loopback name"
    return None


def host_allowed(host: str, sockname: object) -> bool:
    """`Host` names this listener: a loopback name or its own address, with its port.

    A unix socket cannot be reached by a browser at all; it accepts a loopback name with any
    port or none (curl --unix-socket and aiohttp's UnixConnector send ``localhost``).
    """
    name, port = _split(host.strip().lower())
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        own = {*LOOPBACK_NAMES, _bracketed(str(sockname[0]))}
        listening = int(sockname[1])
        return name in own and (port == listening or (port is None and listening == HTTP_PORT))
    return name in LOOPBACK_NAMES


def _split(host: str) -> tuple[str, int | None]:
    """("name", port) of a Host value; port None when absent, -1 when it is not a port."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        if not rest:
            return name, None
        if not rest.startswith(":"):
            return host, -1
        digits = rest[1:]
    else:
        name, sep, digits = host.rpartition(":")
        if not sep:
            return host, None
    # bounded before int(): a Host of thousands of digits is not a port
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 5):
        return name, -1
    return name, int(digits)


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _quote(value: str) -> str:
    text = repr(value)
    return text if len(text) <= QUOTED else text[: QUOTED - 1] + "…"
