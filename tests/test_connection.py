"""Which servers redwork accepts (a pure function of INFO), and where the URL comes from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from redwork.connection import Backoff, check_server, resolve_url
from redwork.errors import ServerPolicyError, ServerVersionError
from redwork.settings import Settings


@pytest.mark.parametrize(
    "info",
    [
        {"redis_version": "7.0.0", "maxmemory_policy": "noeviction"},
        {"redis_version": "7.4.2", "maxmemory_policy": "noeviction"},
        {"redis_version": "7.2.4", "valkey_version": "8.1.8", "maxmemory_policy": "noeviction"},
        {"redis_version": "7.2.4", "valkey_version": "7.2.5"},
    ],
)
def test_supported_servers_are_accepted(info: dict[str, str]) -> None:
    check_server(info)


@pytest.mark.parametrize(
    ("info", "named"),
    [
        ({"redis_version": "6.2.14"}, "Redis 6.2.14 is too old"),
        ({"redis_version": "7.2.4", "valkey_version": "7.0.1"}, "Valkey 7.0.1 is too old"),
    ],
)
def test_old_servers_are_refused_with_the_version_named(info: dict[str, str], named: str) -> None:
    with pytest.raises(ServerVersionError, match=named):
        check_server(info)


def test_an_evicting_server_is_refused_naming_the_policy() -> None:
    with pytest.raises(ServerPolicyError, match="maxmemory-policy is allkeys-lru"):
        check_server({"redis_version": "7.2.0", "maxmemory_policy": "allkeys-lru"})


def test_a_given_url_wins_over_the_embedded_server(tmp_path: Path) -> None:
    settings = Settings.load(env={}, redis_url="redis://cache.internal:6380/2", data_dir=tmp_path)
    assert resolve_url(settings) == "redis://cache.internal:6380/2"
    assert not any(tmp_path.iterdir())  # nothing was started


def test_an_outage_is_a_warning_when_it_begins_not_one_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="redwork.connection")
    backoff, away = Backoff(), redis.ConnectionError("refused")
    delays = [backoff.next("fetch", away) for _ in range(8)]
    assert all(0 < delay <= backoff.cap for delay in delays)
    backoff.reset()
    backoff.next("fetch", away)
    levels = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert levels == [
        ("WARNING", "fetch: server unavailable"),
        *[("DEBUG", "fetch: server unavailable")] * 7,
        ("INFO", "fetch: the server answers again"),
        ("WARNING", "fetch: server unavailable"),
    ]
