"""The mock upstream (SPEC section 8): the receipt contract of section 4 with fault switches.

In process: `MockUpstream` (`await start()`, `.url`, `set_faults(...)`, `go_down()`,
`come_back()`, `stop()`, `.state` for the accepted set and counters). Standalone:
`python -m kktd.testbed.mock_upstream --port 8080`, switched over HTTP with `POST /_mock/faults`,
`POST /_mock/down`, `POST /_mock/reset` and read with `GET /_mock/stats`.
"""

from __future__ import annotations

from kktd.testbed.mock_upstream.server import Arrival, MockUpstream
from kktd.testbed.mock_upstream.state import (
    RECEIPTS_PATH,
    STALE_FENCE_STATUS,
    FaultError,
    Faults,
    MockState,
    Recorded,
)

__all__ = [
    "RECEIPTS_PATH",
    "STALE_FENCE_STATUS",
    "Arrival",
    "FaultError",
    "Faults",
    "MockState",
    "MockUpstream",
    "Recorded",
]
