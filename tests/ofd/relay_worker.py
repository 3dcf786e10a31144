"""A relay in a process of its own, to be killed with SIGKILL: ``python relay_worker.py PORT OFD``.

Relays the FN's messages on serial port PORT to the OFD on 127.0.0.1:OFD until killed; its logs
go to stderr.
"""

from __future__ import annotations

import asyncio
import sys

from kktd.config import OfdConfig
from kktd.kkt.link import KktLink
from kktd.lifecycle.log import configure_logging
from kktd.ofd.audit import MemoryAudit
from kktd.ofd.relay import OfdRelay


async def run(port: str, ofd_port: int) -> None:
    link = KktLink(port, 115200)
    cfg = OfdConfig("relay", "127.0.0.1", ofd_port, 10.0)
    await OfdRelay(link, cfg, MemoryAudit(), interval=0.05).run(lambda: None)


if __name__ == "__main__":
    configure_logging("debug", "json")
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
