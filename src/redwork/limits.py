"""Rate and concurrency limits, per queue, per task or per group of jobs (the Redis side
is scripts/includes/limits.lua: fetch parks a job that would exceed a limit, and it
returns when there is room, so no worker holds or polls it).

A scope is `queue` (every job of the queue), `task:<task name>`, or `group` (counted
separately for each value of the jobs' `group` option: "at most 2 at once per
customer"). Limits are stored per queue, so every worker and producer agrees on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redwork.queue import Op, Queue, as_dict, text
from redwork.scripts import load

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h)\s*")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


class LimitError(ValueError):
    """A limit that cannot work: a bad rate, count or scope."""


@dataclass(frozen=True, slots=True)
class Limit:
    concurrency: int = 0
    """Jobs of the scope running at once, at most (0: no limit)."""
    rate: int = 0
    """Jobs of the scope starting within any `period_ms`, at most (0: no limit)."""
    period_ms: int = 1000

    def __post_init__(self) -> None:
        if self.concurrency < 0 or self.rate < 0 or self.period_ms < 1:
            raise LimitError("concurrency and rate must be 0 or more, the period positive")
        if not (self.concurrency or self.rate):
            raise LimitError("a limit needs a concurrency or a rate")

    @classmethod
    def of(cls, concurrency: int | None = None, rate: str | None = None) -> Limit:
        """`rate` as "<count>/<period>": "50/s", "1000/m", "10/5s", "2/100ms"."""
        count, period = parse_rate(rate) if rate is not None else (0, 1000)
        return cls(concurrency or 0, count, period)

    def spec(self) -> str:
        return f"{self.concurrency} {self.rate} {self.period_ms}"

    @classmethod
    def from_spec(cls, spec: bytes | str) -> Limit:
        concurrency, rate, period = (int(part) for part in text(spec).split())
        return cls(concurrency, rate, period)

    def __str__(self) -> str:
        parts = []
        if self.concurrency:
            parts.append(f"at most {self.concurrency} at once")
        if self.rate:
            parts.append(f"{self.rate} per {self.period_ms:g} ms")
        return ", ".join(parts)


def parse_rate(rate: str) -> tuple[int, int]:
    """(count, period in ms) of "50/s", "10/5s", "2/100ms", "1000/h"."""
    match = _RATE.fullmatch(rate)
    if match is None:
        raise LimitError(f"rate {rate!r}: use <count>/<period> such as 50/s, 10/5s, 1000/h")
    count, amount, unit = match.groups()
    period = round(float(amount or 1) * _UNIT_MS[unit])
    if int(count) < 1 or period < 1:
        raise LimitError(f"rate {rate!r}: count and period must be positive")
    return int(count), period


def check_scope(scope: str) -> str:
    if scope in ("queue", "group") or (scope.startswith("task:") and len(scope) > 5):
        return scope
    raise LimitError(f"limit scope {scope!r}: use queue, group or task:<task name>")


def set_limit(queue: Queue, scope: str, limit: Limit | None) -> Op[int]:
    """Set (None: clear) a scope's limit; replies how many parked jobs were sent back."""
    return Op(
        int,
        load("limits_set"),
        (queue.limits, queue.wait, queue.marker),
        (queue.prefix, check_scope(scope), "" if limit is None else limit.spec()),
    )


def read_limits(queue: Queue) -> Op[dict[str, Limit]]:
    def parse(reply: Any) -> dict[str, Limit]:
        return {text(k): Limit.from_spec(v) for k, v in as_dict(reply).items()}

    return Op(parse, command=("HGETALL", queue.limits))
