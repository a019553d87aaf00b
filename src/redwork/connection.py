"""Connecting to the server: which URL (given, or the embedded Valkey), client options,
and the checks that refuse a server that would lose jobs."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from redwork.errors import ServerPolicyError, ServerVersionError
from redwork.settings import Settings

T = TypeVar("T")
log = logging.getLogger("redwork.connection")
MIN_REDIS = (7, 0)
MIN_VALKEY = (7, 2)
# Failures redis-py retries by itself on a fresh connection; longer outages surface
# to the caller, which logs them and retries with its own backoff.
_RETRY_ON = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# What "the server is away" looks like: refused or reset connections, timeouts, and a
# server still loading its AOF (BusyLoadingError is a ConnectionError).
# A full (noeviction) or read-only (failing over) server is away too, for writes.
TRANSIENT = (
    *_RETRY_ON,
    OSError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
)


def resolve_url(settings: Settings) -> str:
    """The URL the user gave, or that of the embedded server, started if need be."""
    if settings.redis_url:
        return settings.redis_url
    from redwork.server import EmbeddedServer

    server = EmbeddedServer(settings.data_dir, fsync=settings.fsync, binary=settings.server_binary)
    return server.ensure_running()


def client_options(settings: Settings, *, blocking: bool = False) -> dict[str, Any]:
    # A blocking fetch waits up to block_timeout on the server; its socket must wait longer.
    timeout = settings.socket_timeout + (settings.block_timeout if blocking else 0.0)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.socket_timeout,
        "health_check_interval": 0 if blocking else 30,
        # The fetching connection is never retried by redis-py: a fetch sent twice after a
        # lost reply would lease jobs nobody holds. The worker's own loop retries instead.
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 0 if blocking else 2),
        "retry_on_error": list(_RETRY_ON),
    }


ASYNC_POOL_SIZE = 64
"""Connections an async client opens at most; more callers at once wait for one."""
POOL_WAIT = 30.0
"""Seconds a caller waits for a free connection before ConnectionError."""


def sync_client(url: str, settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(url, **client_options(settings))


def async_client(
    url: str, settings: Settings, *, blocking: bool = False, single: bool = False
) -> redis.asyncio.Redis:
    """`single`: one dedicated connection, for a role that sends one command at a time;
    it skips the pool's checkout and checks on every command of the hot path."""
    options = client_options(settings, blocking=blocking)
    if single:
        return redis.asyncio.Redis.from_url(url, single_connection_client=True, **options)
    # redis-py's default async pool raises "Too many connections" past 100 at once (200
    # live-update clients subscribing together, say); this one makes callers wait.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=ASYNC_POOL_SIZE, timeout=POOL_WAIT, **options
    )
    return redis.asyncio.Redis(connection_pool=pool)


def check_server(info: dict[str, Any]) -> None:
    """Raise unless the server (from INFO) is recent enough and never evicts keys."""
    if "valkey_version" in info:
        name, version, minimum = "Valkey", str(info["valkey_version"]), MIN_VALKEY
    else:
        name, version, minimum = "Redis", str(info.get("redis_version", "0")), MIN_REDIS
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < minimum:
        raise ServerVersionError(
            f"{name} {version} is too old: redwork needs {name} "
            f"{'.'.join(map(str, minimum))} or newer"
        )
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise ServerPolicyError(
            f"the server's maxmemory-policy is {policy}: it may evict jobs. "
            "Set maxmemory-policy noeviction"
        )


class Backoff:
    """Growing, jittered waits between attempts to reach a server that is away, with a
    log line for each, so an outage is visible but never a busy loop."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first, self.cap, self.delay = first, cap, 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def next(self, what: str, exc: BaseException) -> float:
        self.delay = min(self.cap, self.delay * 2 or self.first)
        log.warning("%s: server unavailable (%s); retrying in %.2fs", what, exc, self.delay)
        return self.delay * (0.5 + random.random() / 2)


def retrying(call: Callable[[], T], what: str, give_up_after: float) -> T:
    """Repeat `call` (which must be safe to repeat) while the server is away, for at most
    `give_up_after` seconds; then the last error is raised."""
    deadline = time.monotonic() + give_up_after
    backoff = Backoff()
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            if time.monotonic() >= deadline:
                raise
            time.sleep(backoff.next(what, exc))


async def aretrying(call: Callable[[], Awaitable[T]], what: str, give_up_after: float) -> T:
    """The async twin of retrying()."""
    deadline = time.monotonic() + give_up_after
    backoff = Backoff()
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(backoff.next(what, exc))
