"""The chaos run's producer, a process of its own so the runner can SIGKILL it mid-batch:
`python -m tests.chaos.producer ACKS GENERATION SEED RATE`.

It sends a mixed stream of calls (plain jobs, some delayed; keyed jobs; chain and fan-in
workflows) at about RATE jobs/s until SIGTERM, and logs each call to the ACKS file:
an `intent` line before, an `ack` line once the call returned. Ids are fixed before the
first try and a failed call is retried with the same ids, which the server applies once;
a call cut short by a kill stays an intent (its jobs may or may not exist, at most once).
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson

from redwork import Workflow
from tests.chaos.tasks import app, keyed, node, plain

KEYS = 8
"""Keys of the keyed jobs, shared by every generation so a key's line spans restarts."""


def plain_batch(rng: random.Random, prefix: str) -> tuple[list[str], Any]:
    envelopes = []
    for i in range(20):
        delay = rng.uniform(0.2, 2.0) if rng.random() < 0.15 else None
        envelopes.append(plain.options(job_id=f"{prefix}-{i}", countdown=delay).prepare())
    return [e.id for e in envelopes], lambda: app.enqueue_many(envelopes)


def keyed_batch(rng: random.Random, prefix: str) -> tuple[list[str], Any]:
    # The counter a job adds to is that of the key it runs under.
    keys = [f"k{rng.randrange(KEYS)}" for _ in range(10)]
    envelopes = [
        keyed.options(job_id=f"{prefix}-{i}", key=key).prepare(key) for i, key in enumerate(keys)
    ]
    return [e.id for e in envelopes], lambda: app.enqueue_many(envelopes)


def workflow(rng: random.Random, prefix: str) -> tuple[list[str], Any]:
    graph = Workflow()
    ids = [f"{prefix}-{j}" for j in range(5)]
    if rng.random() < 0.5:  # a chain of five
        deps: list[list[str]] = [[], *[[ids[j - 1]] for j in range(1, 5)]]
    else:  # four in parallel, then one after all of them
        deps = [[], [], [], [], ids[:4]]
    for job_id, needs in zip(ids, deps, strict=True):
        graph.add(node.options(job_id=job_id).s(deps=needs), depends_on=needs)
    return ids, lambda: app.submit(graph, workflow_id=prefix)


def log(acks: TextIO, kind: str, ids: list[str]) -> None:
    acks.write(orjson.dumps({kind: ids}).decode() + "\n")
    acks.flush()  # in the kernel's hands before the next call: a SIGKILL keeps it


def main(acks_path: str, generation: str, seed: str, rate: str) -> None:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    rng = random.Random(f"{seed}-{generation}")
    per_second = float(rate)
    kinds = (plain_batch, plain_batch, keyed_batch, workflow)
    started, sent = time.monotonic(), 0
    with Path(acks_path).open("a") as acks:
        for n in range(sys.maxsize):
            if stopping:
                break
            ids, call = rng.choice(kinds)(rng, f"g{generation}-{n}")
            log(acks, "intent", ids)
            while not stopping:
                try:
                    call()
                    log(acks, "ack", ids)
                    break
                except Exception as exc:  # the server is away: retry with the same ids
                    print(f"producer: {type(exc).__name__}: {exc}; retrying", file=sys.stderr)
                    time.sleep(0.2)
            sent += len(ids)
            ahead = sent / per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    app.client.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
