"""The reliability harness (../shared/RELIABILITY.md): fault injectors and checks that
every fault test and the chaos runner share. The server is redwork.server.ServerProcess
(SIGKILL, SIGTERM, SIGSTOP/SIGCONT, restart on its AOF); this module adds the TCP proxy
that cuts or stalls connections, worker processes, and the invariant check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from redwork.queue import Queue, run
from redwork.server import free_port

ROOT = Path(__file__).resolve().parents[2]
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "skipped"})


class ChaosProxy:
    """A TCP relay on a free loopback port, between clients and the server, running an
    asyncio loop in a thread of its own. `cut()` resets every open connection (SO_LINGER
    0, so the peers see RST, not a polite FIN); `stall()` makes it forward nothing, in
    either direction, until `flow()`: connections stay open and new ones are accepted, as
    in a network partition, and what was sent meanwhile arrives once it heals (TCP would
    have retransmitted it), possibly after its sender gave up waiting. `drop_replies()`
    makes every open connection swallow the next reply it carries and then reset: the
    request was applied, its sender never learns it (an ambiguous write)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        """Client sides whose next reply is to be dropped."""
        self._armed: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="chaos-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ChaosProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the chaos proxy did not start listening")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._flowing.set()
        server = self.loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port)
        )
        self._ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
        except OSError:  # the server is down: the client sees its connection reset
            self._reset(client)
            return
        pair = {client, upstream}
        self._writers |= pair
        self._clients.add(client)
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream), self._pump(upstream_reader, client)
            )
        finally:
            self._clients.discard(client)
            self._armed.discard(client)
            for writer in pair:
                self._writers.discard(writer)
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer in self._armed:  # a reply to drop: swallow it and hang up
                    break
                writer.write(data)
                await writer.drain()
        # One side ended: end the other, so that neither waits on a dead peer.
        self._reset(writer)

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def _call(self, fn: Callable[[], object]) -> None:
        """Run fn in the proxy's loop (its state belongs to that thread) and wait for it."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(10)

    def cut(self) -> int:
        """Reset every open connection; returns how many there were."""
        cut = len(self._writers)
        self._call(lambda: [self._reset(w) for w in list(self._writers)])
        return cut // 2

    def drop_replies(self) -> int:
        """Arm every open connection to drop the next reply it carries and reset;
        returns how many were armed."""
        armed = len(self._clients)
        self._call(lambda: self._armed.update(self._clients))
        return armed

    def stall(self) -> None:
        self._call(self._flowing.clear)

    def flow(self) -> None:
        self._call(self._flowing.set)

    def close(self) -> None:
        self.flow()
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class WorkerProc:
    """`python -m redwork worker APP` as a child process, its log in a file."""

    def __init__(self, app: str, env: Mapping[str, str], log: Path) -> None:
        self.app, self.env, self.log = app, dict(env), log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "redwork", "worker", self.app, "--processes", "1"],
                env=self.env, cwd=ROOT, stdout=out, stderr=out,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def sigkill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGCONT (it may be stopped), SIGTERM, then SIGKILL past the timeout."""
        if self.proc is None:
            return None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.sigkill()
            return None


@dataclass
class Census:
    """Where every job of a queue is, read from its keys while nothing runs."""

    job_states: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for s in self.job_states.values() if s == state)


_STRUCTURE_OF_STATE = {"active": "active", "delayed": "delayed", "failed": "failed"}


def _members(client: redis.Redis, q: Queue) -> tuple[dict[str, list[str]], dict[str, int]]:
    """job id -> the structures that hold it; and structure kind -> its size."""
    found: dict[str, list[str]] = defaultdict(list)
    sizes: dict[str, int] = defaultdict(int)
    lists = [q.prefix + "wait", *(f"{q.prefix}wait:{p}" for p in range(1, 10))]
    for pattern in ("key:*", "parked:*"):
        lists += [k.decode() for k in client.scan_iter(match=q.prefix + pattern, count=1000)]
    for name in lists:
        kind = name[len(q.prefix) :].split(":", 1)[0]  # wait, key or parked
        for raw in client.lrange(name, 0, -1):
            found[raw.decode()].append(kind)
            sizes[kind] += 1
    for kind in ("active", "delayed", "failed"):
        for raw, score in client.zrange(q.prefix + kind, 0, -1, withscores=True):
            found[raw.decode()].append(kind)
            sizes[kind] += 1
            if kind == "active" and score <= 0:
                found[raw.decode()].append("active without a lease deadline")
    return found, sizes


def check_invariants(client: redis.Redis, queue_name: str, max_problems: int = 50) -> Census:
    """Each job is in exactly one state structure, the one its hash's state names (a
    waiting job: a wait list, its key's line or a limit's parked list; a pending or
    ended job: none); every entry of a structure has a job hash; every active job has a
    lease deadline; and the queue's counts agree with the structures. Read while nothing
    runs. Problems are listed, not raised, so that a run reports them all."""
    q = Queue(queue_name)
    census = Census()
    found, sizes = _members(client, q)
    ids = [
        key.decode()[len(q.prefix) + len("job:") :]
        for key in client.scan_iter(match=q.prefix + "job:*", count=1000)
    ]
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(q.job_key(job_id), "state")
    for job_id, raw_state in zip(ids, pipe.execute(), strict=True):
        state = raw_state.decode() if raw_state else "(none)"
        census.job_states[job_id] = state
        where = found.pop(job_id, [])
        if state == "waiting":
            ok = len(where) == 1 and where[0] in ("wait", "key", "parked")
        elif state in _STRUCTURE_OF_STATE:
            ok = where == [_STRUCTURE_OF_STATE[state]]
        else:
            ok = state in FINAL_STATES | {"pending"} and not where
        if not ok:
            census.problems.append(f"job {job_id} is {state} and held by {where or 'nothing'}")
    for job_id, where in found.items():
        census.problems.append(f"{where} hold {job_id}, which has no job hash")
    counts = run(client, q.counts())
    reported = {
        "wait": counts.waiting, "active": counts.active, "delayed": counts.delayed,
        "failed": counts.failed, "key": counts.held, "parked": counts.limited,
    }  # fmt: skip
    for kind, count in reported.items():
        if count != sizes[kind]:
            census.problems.append(f"counts say {count} {kind}, the keys hold {sizes[kind]}")
    del census.problems[max_problems:]
    return census
