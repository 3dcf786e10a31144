"""What the control surface (the API, the metrics, the status) may see of a running daemon.

The daemon owns the lifecycle; this is the narrow, shared state it hands the control surface
once the components exist (uvicorn's ``ServerState`` is the model): nothing in ``kktd.control.api``
or ``kktd.control.status`` reaches into the daemon itself. The daemon keeps it current: a reload
swaps ``config`` and records ``last_reload`` and ``reloads``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kktd.config import Config
    from kktd.lifecycle.components import Components
    from kktd.lifecycle.supervisor import Supervisor


@dataclass(slots=True)
class ReloadResult:
    """The outcome of the last SIGHUP, for STATUS=, /v1/status and metrics."""

    ok: bool
    at: float
    error: str | None = None
    key: str | None = None  # the key (or file:line) at fault, for the short STATUS= line


@dataclass(slots=True)
class Runtime:
    """The running daemon as the API sees it; `config` is the one in force (after reloads)."""

    instance: str
    config_path: Path
    config: Config
    supervisor: Supervisor
    components: Components
    started_at: float = field(default_factory=time.time)
    last_reload: ReloadResult | None = None
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
