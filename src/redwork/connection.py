"""Connecting to the server: which URL (given, or the embedded Valkey), client options,
and the checks that refuse a server that would lose jobs."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from redwork.errors import (
    ConfigurationError,
    NotDurable,
    ServerPolicyError,
    ServerVersionError,
)
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
    # A cluster failing over: no primary for a slot yet, or a slot map being rebuilt.
    redis.exceptions.ClusterDownError,
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
    NotDurable,
)
# What the server (or, for keys of several cluster slots, redis-py) refuses for good
# (minus what TRANSIENT names: check that first).
REFUSED = (redis.exceptions.ResponseError, redis.exceptions.RedisClusterException)


def resolve_url(settings: Settings) -> str:
    """The URL the user gave, or that of the embedded server, started if need be."""
    if settings.redis_url:
        return settings.redis_url
    from redwork.server import EmbeddedServer

    server = EmbeddedServer(settings.data_dir, fsync=settings.fsync, binary=settings.server_binary)
    return server.ensure_running()


SyncRedis: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncRedis: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
# Query options of a Sentinel URL meant for the sentinels, not for the servers they watch.
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class Target:
    """Where the server is: one server (`redis://`, `rediss://`, `unix://`), a primary
    found through Sentinel, or a Cluster. See docs/deployment.md for the URL forms."""

    shape: str
    """server, sentinel or cluster."""
    url: str
    """The server's URL; for sentinel and cluster, that of the first node with the
    credentials, TLS and query options that every server of the set is reached with."""
    nodes: tuple[tuple[str, int], ...] = ()
    """The sentinels, or the cluster's seed nodes."""
    service: str = ""
    """The name under which the sentinels know the primary."""
    sentinel_auth: tuple[tuple[str, str], ...] = ()

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def options(self) -> dict[str, Any]:
        """Connection options that redis-py reads from the URL (credentials, TLS files,
        timeouts), as keyword arguments for the sentinel and cluster clients."""
        options = dict(redis.connection.parse_url(self.url))  # type: ignore[no-untyped-call]
        for key in ("host", "port", "path", "connection_class"):
            options.pop(key, None)
        if self.shape == "cluster":
            options.pop("db", None)
        if self.tls:
            options["ssl"] = True
        return options


def parse_target(url: str) -> Target:
    """Read a connection URL; ConfigurationError names what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"redis_url {_redacted(url)!r} has no scheme (redis://...)")
    if scheme in ("redis", "rediss", "unix"):
        return Target("server", url)
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise ConfigurationError(
            f"redis_url scheme {scheme!r} is not one of redis, rediss, unix, "
            f"{', '.join(SENTINEL_SCHEMES + CLUSTER_SCHEMES)}"
        )
    base = scheme.partition("+")[0]
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    userinfo, _, hosts = netloc.rpartition("@")
    nodes = tuple(_host_port(h, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ConfigurationError(f"redis_url {_redacted(url)!r} names no host")
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    sentinel_auth = tuple((k, v) for k, v in params if k in _SENTINEL_QUERY)
    query = urllib.parse.urlencode([(k, v) for k, v in params if k not in _SENTINEL_QUERY])
    credentials = f"{userinfo}@" if userinfo else ""
    host, port = nodes[0]
    parts = [p for p in path.split("/") if p]
    if scheme in CLUSTER_SCHEMES:
        if parts:
            raise ConfigurationError(
                f"redis_url {_redacted(url)!r}: a cluster has no database number or service "
                "name (redis+cluster://host:port,host:port)"
            )
        first = f"{base}://{credentials}{_netloc(host, port)}/0"
        return Target("cluster", _with_query(first, query), nodes)
    if not parts or len(parts) > 2:
        raise ConfigurationError(
            f"redis_url {_redacted(url)!r}: a Sentinel URL names the service, and may add a "
            "database number (redis+sentinel://host:26379,host:26379/service/0)"
        )
    db = parts[1] if len(parts) == 2 else "0"
    first = f"{base}://{credentials}{_netloc(host, port)}/{db}"
    return Target("sentinel", _with_query(first, query), nodes, parts[0], sentinel_auth)


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"redis_url {_redacted(url)!r}: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


def _redacted(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def client_options(
    settings: Settings, *, blocking: bool = False, asynchronous: bool = False
) -> dict[str, Any]:
    # A blocking fetch waits up to block_timeout on the server; its socket must wait longer.
    timeout = settings.socket_timeout + (settings.block_timeout if blocking else 0.0)
    retry = AsyncRetry if asynchronous else Retry
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.socket_timeout,
        "health_check_interval": 0 if blocking else 30,
        # The fetching connection is never retried by redis-py: a fetch sent twice after a
        # lost reply would lease jobs nobody holds. The worker's own loop retries instead.
        "retry": retry(ExponentialBackoff(cap=1.0, base=0.05), 0 if blocking else 2),
        "retry_on_error": list(_RETRY_ON),
    }


ASYNC_POOL_SIZE = 64
"""Connections an async client opens at most; more callers at once wait for one."""
POOL_WAIT = 30.0
"""Seconds a caller waits for a free connection before ConnectionError."""


def sync_client(url: str, settings: Settings) -> SyncRedis:
    target = parse_target(url)
    options = client_options(settings)
    if target.shape == "cluster":
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **options, **target.options())
    if target.shape == "sentinel":
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options),
            **options, **target.options(),
        )  # fmt: skip
        primary_class = _SentinelPrimaryTLS if target.tls else _SentinelPrimary
        pool = redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.service, sentinel, connection_class=primary_class,
            **options, **target.options(),
        )  # fmt: skip
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, **options)


def async_client(
    url: str, settings: Settings, *, blocking: bool = False, single: bool = False
) -> AsyncRedis:
    """`single`: one dedicated connection, for a role that sends one command at a time;
    it skips the pool's checkout and checks on every command of the hot path (not on a
    cluster, where a role talks to several nodes)."""
    target = parse_target(url)
    options = client_options(settings, blocking=blocking, asynchronous=True)
    if target.shape == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes, **options, **target.options()
        )
    if target.shape == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options),
            **options, **target.options(),
        )  # fmt: skip
        primary_class = _AsyncSentinelPrimaryTLS if target.tls else _AsyncSentinelPrimary
        primary = redis.asyncio.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.service, sentinel, connection_class=primary_class,
            **options, **target.options(),
        )  # fmt: skip
        return redis.asyncio.Redis(connection_pool=primary, single_connection_client=single)
    if single:
        return redis.asyncio.Redis.from_url(url, single_connection_client=True, **options)
    # redis-py's default async pool raises "Too many connections" past 100 at once (200
    # live-update clients subscribing together, say); this one makes callers wait.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=ASYNC_POOL_SIZE, timeout=POOL_WAIT, **options
    )
    return redis.asyncio.Redis(connection_pool=pool)


class _SentinelPrimary(redis.sentinel.SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is on every connect.
    redis-py's does so only when a pool hands it out: its own retry, or a client reusing
    its connection, reconnects to the address it had, which after a failover is the old
    primary, back (for a while) as a primary whose writes are then thrown away."""

    _resolved = False

    def connect_to(self, address: tuple[str, int]) -> None:
        self._resolved = True
        try:
            super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._resolved = False

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if not self._resolved:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(*args, **kwargs)


class _SentinelPrimaryTLS(_SentinelPrimary, redis.connection.SSLConnection):
    pass


class _AsyncSentinelPrimary(redis.asyncio.sentinel.SentinelManagedConnection):
    """The async twin of _SentinelPrimary."""

    _resolved = False

    async def connect_to(self, address: tuple[str, int]) -> None:
        self._resolved = True
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._resolved = False

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if not self._resolved:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(*args, **kwargs)


class _AsyncSentinelPrimaryTLS(_AsyncSentinelPrimary, redis.asyncio.connection.SSLConnection):
    pass


def _sentinel_kwargs(target: Target, options: dict[str, Any]) -> dict[str, Any]:
    """How the sentinels are reached: the servers' timeouts and TLS, their own
    credentials (sentinel_username, sentinel_password in the URL's query)."""
    kwargs = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    tls = target.options()
    kwargs.update({k: v for k, v in tls.items() if k.startswith("ssl")})
    kwargs.update({k.removeprefix("sentinel_"): v for k, v in target.sentinel_auth})
    return kwargs


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
    """Growing, jittered waits between attempts to reach a server that is away: never a
    busy loop. An outage is logged as a warning when it begins and then every
    `quiet_for` seconds while it lasts (each retry in between at DEBUG: a worker has
    several roles retrying at once), and its end at INFO."""

    def __init__(self, first: float = 0.05, cap: float = 2.0, quiet_for: float = 30.0) -> None:
        self.first, self.cap, self.quiet_for, self.delay = first, cap, quiet_for, 0.0
        self._what = ""
        self._warned_at = -math.inf

    def reset(self) -> None:
        if self.delay:
            log.info("%s: the server answers again", self._what)
        self.delay = 0.0
        self._warned_at = -math.inf

    def next(self, what: str, exc: BaseException) -> float:
        self.delay = min(self.cap, self.delay * 2 or self.first)
        self._what = what
        why = "not confirmed durable" if isinstance(exc, NotDurable) else "server unavailable"
        now = time.monotonic()
        level = logging.WARNING if now - self._warned_at >= self.quiet_for else logging.DEBUG
        if level == logging.WARNING:
            self._warned_at = now
        log.log(level, "%s: %s (%s); retrying in %.2fs", what, why, exc, self.delay)
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
