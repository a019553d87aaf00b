"""The supervisor: runs P worker processes, restarts those that die, forwards stop
signals, and makes sure no child outlives it (Linux parent-death signal)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

log = logging.getLogger("redwork.supervisor")
SUPERVISOR_PID_ENV = "REDWORK_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the parent dies,
    then close the race where it died before we asked."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)


def orphaned() -> bool:
    """True in a worker whose supervisor is gone: it should hand its jobs back at once."""
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    return expected is not None and os.getppid() != int(expected)


class Supervisor:
    def __init__(self, command: Sequence[str], processes: int, env: Mapping[str, str]) -> None:
        self.command = list(command)
        self.processes = processes
        self.env = {**env, SUPERVISOR_PID_ENV: str(os.getpid())}
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self._restarts: dict[int, float] = {}
        self._signals: list[int] = []
        self._forwarded: dict[int, int] = {}  # pid -> how many of _signals it was sent

    def _spawn(self, slot: int) -> None:
        parent = os.getpid()
        # Own process group: a Ctrl+C in the terminal reaches only the supervisor, which
        # forwards it once; otherwise each child would count it twice.
        child = subprocess.Popen(
            self.command,
            env=self.env,
            process_group=0,
            preexec_fn=lambda: _die_with_parent(parent),
        )
        self.children[child.pid] = slot
        log.info("worker process %d started (pid %d)", slot, child.pid)
        self._forward(child.pid)  # a stop signal may have come while it was starting

    def _forward(self, pid: int) -> None:
        """Send the child each stop signal it has not had yet, once."""
        while (sent := self._forwarded.get(pid, 0)) < len(self._signals):
            self._forwarded[pid] = sent + 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, self._signals[sent])

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            log.warning("second signal: workers hand back their jobs and exit now")
        else:
            log.info("stopping %d worker processes", len(self.children))
        self.stopping = True
        self._signals.append(signum)
        for pid in list(self.children):
            self._forward(pid)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.processes):
            if self.stopping:
                break
            self._spawn(slot)
        worst = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            slot = self.children.pop(pid, -1)
            if slot < 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            worst = worst or code
            if not self.stopping:
                log.warning(
                    "worker process %d (pid %d) exited with %d; restarting", slot, pid, code
                )
                self._restart(slot)
        return 0 if self.stopping else worst

    def _restart(self, slot: int) -> None:
        # A child that keeps dying right away (a broken import, say) is restarted at most
        # once a second instead of in a tight loop.
        since = time.monotonic() - self._restarts.get(slot, 0.0)
        if since < 1.0:
            time.sleep(1.0 - since)
        self._restarts[slot] = time.monotonic()
        if not self.stopping:
            self._spawn(slot)


def worker_command(app_path: str, processes: int = 1) -> list[str]:
    """The command line of `redwork worker APP` with this Python."""
    return [sys.executable, "-m", "redwork", "worker", app_path, "--processes", str(processes)]
