"""Wiring: build every component from the config, hand each only what it needs.

The daemon (lifecycle) owns the order of start and stop; this module owns which parts exist and
how they are connected: poller -> journal -> sync engine -> upstream.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from kktd import __version__
from kktd.config import Config
from kktd.control.api.metrics import RoundHistogram
from kktd.control.status import heartbeat
from kktd.journal import Journal, JournalError, JournalVersionError
from kktd.kkt.link import KktLink
from kktd.kkt.poller import Poller
from kktd.lifecycle.supervisor import Beat, Runner, sleep_beating
from kktd.ofd.relay import OfdRelay
from kktd.sync.backoff import Backoff
from kktd.sync.breaker import CircuitBreaker
from kktd.sync.client import UpstreamClient
from kktd.sync.engine import SyncEngine
from kktd.sync.lock import LocalSyncLock, SyncLock

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from kktd.control.fleet import Heartbeat

log = structlog.get_logger(__name__)

RETENTION_EVERY = 3600.0
# How long a component may go without beating before the watchdog stops pinging systemd. The
# poller and the relay wait inside one serial exchange without beating: a KKT that takes an
# ENQ but never answers holds one command for up to 11 answer timeouts of 30 s. That is a dead
# KKT, which a restart would not cure (SPEC section 7), so their allowance covers it.
DEADLINES = {"poller": 420.0, "ofd_relay": 420.0}
DEFAULT_DEADLINE = 120.0


def instance_id(environ: dict[str, str] | None = None) -> str:
    """This till's name in the fleet: ``$KKTD_INSTANCE_ID`` or the host name."""
    env = os.environ if environ is None else environ
    return env.get("KKTD_INSTANCE_ID") or socket.gethostname()


class StartupError(Exception):
    """A start that cannot succeed as configured; the message tells the operator why."""


def hold_instance_lock(journal_path: Path) -> int:
    """One kktd per journal: an flock on ``<journal>.lock``, held for the process's life.

    A second ``kktd run`` on the same journal would deliver the same FDs under a lock that only
    guards its own process, and take over the first one's API socket.
    """
    lock_path = journal_path.with_name(journal_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"another kktd (pid {holder}) is running with the journal {journal_path}"
        ) from None
    # The pid only names the holder in the message above: on a full disk (a degraded start
    # that must still come up) the lock holds without it.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class Components:
    config: Config
    instance: str
    journal: Journal
    link: KktLink
    poller: Poller
    client: UpstreamClient
    breaker: CircuitBreaker
    backoff: Backoff
    lock: SyncLock
    engine: SyncEngine
    redis: aioredis.Redis | None = None
    relay: OfdRelay | None = None
    instance_lock: int | None = None
    # the fleet heartbeat, with Redis only; the round durations that /metrics shows
    fleet: Heartbeat | None = None
    rounds: RoundHistogram = field(default_factory=RoundHistogram)

    @classmethod
    async def build(cls, config: Config, instance: str) -> Components:
        """Open and connect everything; on failure, close what was opened and re-raise."""
        async with contextlib.AsyncExitStack() as stack:
            components = await cls._build(config, instance, stack)
            stack.pop_all()  # from here on, close() owns every resource
            return components

    @classmethod
    async def _build(
        cls, config: Config, instance: str, stack: contextlib.AsyncExitStack
    ) -> Components:
        lock_fd = hold_instance_lock(config.journal.path)
        stack.callback(os.close, lock_fd)
        journal = Journal(config.journal.path)
        stack.push_async_callback(journal.close)
        # A journal that cannot be opened (a full disk, an I/O error) is a degraded start, not a
        # failed one: the API tells why, the poller waits, `keep_open` retries until it opens.
        problem = await journal.try_open()
        if isinstance(problem, JournalVersionError):
            raise StartupError(str(problem))  # waiting will not make this kktd newer
        client = UpstreamClient(
            config.upstream,
            instance_id=instance,
            version=__version__,
            gate_writes=bool(config.lock.redis_url),  # only a Redis lease can end mid-round
        )
        await client.start()
        stack.push_async_callback(client.close)
        breaker = CircuitBreaker(config.breaker.failure_threshold, config.breaker.reset_timeout)
        backoff = Backoff(config.backoff.base, config.backoff.max, config.backoff.jitter)
        redis = None
        lock: SyncLock
        if config.lock.redis_url:
            redis, lock = _redis_lock(config, instance)
            stack.push_async_callback(redis.aclose)
        else:
            lock = LocalSyncLock(instance)
        engine = SyncEngine(journal, client, breaker, backoff, lock, config.sync)
        link = KktLink(config.kkt.port, config.kkt.baudrate, password=config.kkt.password)
        relay = _ofd_relay(config, link, journal)

        def journaled() -> None:
            engine.wake()
            relay.wake()  # a new FD means a new message for the OFD

        poller = Poller(link, journal, config.kkt, on_journaled=journaled)
        journal.on_open.append(journaled)  # a journal back after a failure: look at it at once
        components = cls(
            config=config,
            instance=instance,
            journal=journal,
            link=link,
            poller=poller,
            client=client,
            breaker=breaker,
            backoff=backoff,
            lock=lock,
            engine=engine,
            redis=redis,
            relay=relay,
            instance_lock=lock_fd,
        )
        engine.on_round = components.rounds.observe
        if redis is not None:
            components.fleet = _fleet(redis, components)
        return components

    def runners(self) -> dict[str, Runner]:
        runners: dict[str, Runner] = {
            "journal": self.journal.keep_open,
            "poller": self.poller.run,
            "sync": self.engine.run,
            "retention": self.retention,
        }
        if self.relay is not None:
            runners["ofd_relay"] = self.relay.run
        if self.fleet is not None:
            runners["fleet"] = self.fleet.run
        return runners

    async def retention(self, beat: Beat) -> None:
        """Prune synced FDs older than journal.retention_days, hourly; pending and dead stay."""
        while True:
            days = self.config.journal.retention_days
            try:
                pruned = await self.journal.prune(time.time() - days * 86400, progress=beat)
            except JournalError as exc:
                # the journal says itself what is wrong with it; the prune waits for next time
                log.warning("journal.prune_skipped", error=str(exc))
            else:
                if pruned:
                    log.info("journal.pruned", fds=pruned, retention_days=days)
            await sleep_beating(RETENTION_EVERY, beat)

    def reconfigure(self, config: Config) -> None:
        """Apply a validated config; restart-only keys were already kept by the loader."""
        self.config = config
        self.poller.reconfigure(config.kkt)
        self.client.reconfigure(config.upstream)
        self.breaker.reconfigure(config.breaker.failure_threshold, config.breaker.reset_timeout)
        self.backoff.reconfigure(config.backoff.base, config.backoff.max, config.backoff.jitter)
        self.engine.reconfigure(config.sync)
        self.lock.reconfigure(config.lock.key, config.lock.ttl, config.lock.on_unavailable)
        if self.relay is not None:
            self.relay.reconfigure(config.ofd)
            self.relay.breaker.reconfigure(
                config.breaker.failure_threshold, config.breaker.reset_timeout
            )
            self.relay.backoff.reconfigure(
                config.backoff.base, config.backoff.max, config.backoff.jitter
            )

    async def close(self) -> None:
        """Close what holds OS resources; the tasks were stopped by the daemon."""
        await self.link.close()
        await self.client.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.journal.close()
        if self.instance_lock is not None:
            os.close(self.instance_lock)
            self.instance_lock = None


def _redis_lock(config: Config, instance: str) -> tuple[aioredis.Redis, SyncLock]:
    """The Redis client for `lock.redis_url` and the fenced lock on it."""
    # imported here: a `kktd run` without Redis does not load the Redis client (issue 14)
    from kktd.sync.redis_lock import RedisSyncLock, redis_from_url  # noqa: PLC0415

    redis = redis_from_url(config.lock.redis_url, config.lock.password, ttl=config.lock.ttl)
    lock = RedisSyncLock(
        redis, config.lock.key, config.lock.ttl, config.lock.on_unavailable, instance
    )
    return redis, lock


def _fleet(redis: aioredis.Redis, components: Components) -> Heartbeat:
    """This instance's heartbeat in Redis (SPEC section 6), the status read at each beat."""
    # imported here: only a configured Redis has a fleet, and a `kktd run` without one does
    # not load the Redis client for it
    from kktd.control.fleet import Heartbeat  # noqa: PLC0415

    return Heartbeat(redis, components.instance, lambda: heartbeat(components))


def _ofd_relay(config: Config, link: KktLink, journal: Journal) -> OfdRelay:
    """The OFD relay (SPEC section 9), with a breaker and backoff of its own for the OFD leg.

    Built and run whatever ofd.mode says: it stays idle (no serial traffic) while "off", so a
    reload can switch it on. Its audit records go to the journal's ofd_exchanges table.
    """
    breaker = CircuitBreaker(config.breaker.failure_threshold, config.breaker.reset_timeout)
    backoff = Backoff(config.backoff.base, config.backoff.max, config.backoff.jitter)
    return OfdRelay(link, config.ofd, journal, breaker=breaker, backoff=backoff)
