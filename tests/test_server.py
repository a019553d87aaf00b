"""Tests of redwork.server against the real valkey-server binary, no mocks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redwork import server as server_module
from redwork.server import (
    EmbeddedServer,
    ServerError,
    ServerProcess,
    find_server_binary,
    server_config,
)
from tests.conftest import valkey_servers_under


def _client(url: str, timeout: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _gone(pid: int) -> bool:
    """Whether pid has exited (a zombie, which an init that does not reap leaves, counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "rw")
    try:
        yield server
    finally:
        server.stop()
        assert valkey_servers_under(server.data_dir) == []


def test_process_start_ping_stop(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as srv:
        pid = srv.pid
        assert pid is not None
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
        assert _client(srv.url).ping()
    assert srv.pid is None
    assert _gone(pid)
    srv.stop()  # idempotent


def test_fsync_always_survives_sigkill(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, fsync="always")
    try:
        srv.start()
        port, client = srv.port, _client(srv.url)
        client.set("job:1", "payload")
        client.rpush("queue", "a", "b")
        client.close()
        srv.sigkill()
        srv.restart()
        assert srv.port == port
        client = _client(srv.url)
        assert client.get("job:1") == b"payload"
        assert client.lrange("queue", 0, -1) == [b"a", b"b"]
        client.close()
    finally:
        srv.stop()


def test_pause_resume(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as srv:
        client = _client(srv.url, timeout=0.3)
        assert client.ping()
        srv.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        srv.resume()
        client = _client(srv.url)
        assert client.ping()
        srv.pause()
        pid = srv.pid
        assert pid is not None
    assert _gone(pid)  # stop() wakes a paused server so it can act on SIGTERM


def test_sigterm_then_restart(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as srv:
        _client(srv.url).set("k", "v")
        srv.sigterm()  # graceful: the AOF is flushed even with everysec
        assert not srv.running
        srv.restart()
        assert _client(srv.url).get("k") == b"v"


def test_embedded_ensure_running_twice(embedded: EmbeddedServer) -> None:
    url = embedded.ensure_running()
    first = embedded.status()
    assert embedded.ensure_running() == url
    second = embedded.status()
    assert first.running and second.running
    assert first.pid == second.pid
    assert valkey_servers_under(embedded.data_dir) == [first.pid]
    assert (embedded.data_dir / "server.url").read_text().strip() == url
    assert url.startswith("unix://") and url.endswith("valkey.sock?db=0")
    assert second.version == "8.1.8"
    assert _client(url).ping()


def test_embedded_long_path_uses_tcp(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / ("d" * 60) / ("e" * 60))
    try:
        url = server.ensure_running()
        assert url.startswith("redis://127.0.0.1:")
        assert _client(url).ping()
    finally:
        server.stop()


def test_two_processes_race_to_one_server(embedded: EmbeddedServer) -> None:
    code = (
        "import sys; from redwork.server import EmbeddedServer\n"
        "s = EmbeddedServer(sys.argv[1]); print(s.ensure_running(), s.status().pid)\n"
    )
    src = str(Path(server_module.__file__).parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(embedded.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert outputs[0][0] == outputs[1][0]
    url, pid = outputs[0][0].split()
    status = embedded.status()
    assert status.url == url and status.pid == int(pid)
    assert valkey_servers_under(embedded.data_dir) == [int(pid)]


def test_stop_then_status(embedded: EmbeddedServer) -> None:
    url = embedded.ensure_running()
    _client(url).set("k", "v")
    pid = embedded.status().pid
    assert pid is not None
    assert embedded.stop() is True
    assert _gone(pid)
    status = embedded.status()
    assert not status.running and status.pid is None and status.url is None
    assert embedded.stop() is False
    # With AOF, the data outlives the server.
    url = embedded.ensure_running()
    assert _client(url).get("k") == b"v"


def test_stale_pidfile_does_not_block_start(embedded: EmbeddedServer) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    embedded.data_dir.mkdir(parents=True)
    (embedded.data_dir / "valkey.pid").write_text(f"{dead.pid}\n")
    (embedded.data_dir / "valkey.sock").write_text("")  # a socket file left by a crash
    (embedded.data_dir / "server.url").write_text(
        f"redis://127.0.0.1:{server_module.free_port()}/0\n"
    )
    url = embedded.ensure_running()
    assert _client(url).ping()
    status = embedded.status()
    assert status.running and status.pid != dead.pid


def test_invalid_fsync_raises(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="fsync"):
        server_config(tmp_path, port=6379, fsync="no")
    with pytest.raises(ServerError):
        ServerProcess(tmp_path, fsync="sometimes")
    with pytest.raises(ServerError):
        EmbeddedServer(tmp_path, fsync="never")


def test_server_config_args(tmp_path: Path) -> None:
    args = server_config(tmp_path, unixsocket=tmp_path / "v.sock", fsync="always", daemonize=True)
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--port"] == "0"
    assert pairs["--save"] == ""
    assert pairs["--appendfsync"] == "always"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--daemonize"] == "yes"
    assert pairs["--unixsocketperm"] == "700"


def test_find_server_binary(tmp_path: Path) -> None:
    default = find_server_binary()
    assert os.access(default, os.X_OK)
    copy = tmp_path / "valkey-server"
    shutil.copyfile(default, copy)  # copyfile drops the mode bits, so no exec bit
    assert not os.access(copy, os.X_OK)
    assert find_server_binary(str(copy)) == str(copy)
    assert os.access(copy, os.X_OK)
    with pytest.raises(ServerError):
        find_server_binary("no-such-valkey-server")
    with pytest.raises(ServerError):
        find_server_binary(str(tmp_path / "missing"))


def test_silent_server_is_waited_for_not_duplicated(embedded: EmbeddedServer) -> None:
    url = embedded.ensure_running()
    pid = embedded.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # stands in for a server busy replaying a long AOF
    waker = threading.Timer(0.5, os.kill, (pid, signal.SIGCONT))
    waker.start()
    try:
        assert embedded.ensure_running(timeout=5.0) == url
    finally:
        waker.join()
    assert valkey_servers_under(embedded.data_dir) == [pid]


def test_stop_paused_embedded_server(embedded: EmbeddedServer) -> None:
    embedded.ensure_running()
    pid = embedded.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    assert embedded.stop(timeout=5.0) is True
    assert _gone(pid)
