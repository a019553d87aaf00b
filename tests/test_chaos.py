"""The short chaos run of the default suite: tests/chaos/runner.py with a fixed seed,
each fault once (worker SIGKILL, worker SIGSTOP past its lease, server SIGKILL and
restart on its AOF with fsync always, every connection reset, a 3 s partition, the
producer SIGKILLed in a call), under a mixed workload of plain, delayed and keyed jobs,
chains and fan-ins. It fails on any broken invariant; the long runs (bench/chaos.py
--minutes N) are documented in docs/reliability.md."""

from __future__ import annotations

import pytest

from tests.chaos.runner import FAULTS, Config, run, summary


def test_a_short_chaos_run_loses_nothing_and_applies_each_effect_once() -> None:
    report = run(Config(seed=3, gap=2.0))
    assert report.failures() == [], summary(report)
    assert sorted(f.fault for f in report.faults) == sorted(FAULTS)
    assert report.acknowledged > 1000
    assert report.keyed_jobs_completed > 0 and report.workflows > 0
    # The faults hit work in flight, or they proved nothing.
    assert sum(f.in_flight for f in report.faults) > 0, summary(report)


@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_a_long_chaos_run_loses_nothing(fsync: str) -> None:
    """Not in the default suite: `./dev test -m chaos -n 0` (about 10 minutes for both)."""
    report = run(Config(seed=5, minutes=4, fsync=fsync))
    assert report.failures() == [], summary(report)
