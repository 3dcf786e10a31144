"""`kktd run` with a test-only SIGUSR2 handler that blocks the event loop for 3 s.

Kept out of the product: the test needs a loop that is truly stuck (time.sleep inside it), which
no production code path should offer.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from kktd.cli import main
from kktd.lifecycle import daemon as daemon_module

_original_startup = daemon_module.Daemon.startup


async def _startup_with_blocker(self: daemon_module.Daemon) -> None:
    await _original_startup(self)

    def block() -> None:
        self.notifier.status("test: blocking")
        time.sleep(3)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, block)


daemon_module.Daemon.startup = _startup_with_blocker  # type: ignore[method-assign]
sys.exit(main())
