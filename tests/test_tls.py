"""redwork over TLS (a certificate of a self-signed CA) as an ACL user limited to
redwork's keys, channels and commands: workers, producers, state stores, the CLI and
the HTTP API. The embedded Valkey is built without TLS, so these tests run Debian's
redis-server (Redis 7.0), which has it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redwork import JobFailed, JobState, Redwork, Settings
from redwork.queue import Queue
from redwork.server import ServerProcess, free_port
from tests import tasks
from tests.conftest import TEST_SETTINGS, ApiProcess, WorkerProcess
from tests.test_api import wait_done
from tests.test_cli import ok, run_cli, table_row

REDIS_SERVER = "/usr/bin/redis-server"
pytestmark = pytest.mark.skipif(
    not os.path.exists(REDIS_SERVER),
    reason=f"no {REDIS_SERVER} (Redis built with TLS): apt-get install redis-server",
)

USER, PASSWORD = "redwork", "tls-test-password"
# What a deployment grants redwork (docs/deployment.md): its keys, its channels, and the
# commands its clients, workers and scripts send (a script's commands are checked too):
# EVAL after NOSCRIPT, INFO for the server check, TIME for the scripts' clock, PING for
# health checks (redis-py's on idle connections, the API's /healthz). A PSUBSCRIBE
# pattern must be granted literally: the live hub's is. -@dangerous and -@scripting take
# back commands that reach beyond redwork's keys (FLUSHALL, KEYS, FUNCTION FLUSH).
ACL_RULE = (
    "resetkeys ~rw:* resetchannels &rw:* &rw:{*}:events -@all +@read +@write +@pubsub "
    "-@dangerous -@scripting +evalsha +eval +info +time +ping"
)
STATE_PREFIX = "rw:{default}:state"
"""A store prefix under rw:* (so the ACL covers it) in queue default's cluster slot."""


@dataclass(frozen=True)
class TlsServer:
    process: ServerProcess
    tls_port: int
    ca: Path

    @property
    def url(self) -> str:
        """The URL under test: TLS, checked against the CA, as the limited user."""
        return f"rediss://{USER}:{PASSWORD}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.ca}"

    def admin(self) -> redis.Redis:
        """The default user on the plain port: set-up and checks only."""
        return redis.Redis.from_url(self.process.url)


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for 127.0.0.1: (ca, cert, key)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key = directory / "server.pem", directory / "server.key"
    request = directory / "server.csr"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1",
        "-subj", "/CN=redwork test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl("req", *ec, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1")
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-set_serial", "1",
        "-days", "1", "-extfile", extensions, "-out", cert,
    )  # fmt: skip
    return ca, cert, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("certs"))
    tls_port = free_port()
    # The plain port stays open for ServerProcess's readiness check and the admin client.
    extra = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    ]  # fmt: skip
    data = tmp_path_factory.mktemp("redis")
    with ServerProcess(data, binary=REDIS_SERVER, fsync="always", extra=extra) as process:
        server = TlsServer(process, tls_port, ca)
        admin = server.admin()
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", *ACL_RULE.split())
        admin.close()
        yield server


@pytest.fixture
def settings(tls: TlsServer) -> Settings:
    """Overrides conftest's, so that its `app`, `spawn_worker` and `spawn_api` use this
    server as the limited user."""
    admin = tls.admin()
    admin.flushall()
    admin.script_flush()  # so that the user's clients load the scripts (NOSCRIPT paths)
    admin.execute_command("ACL", "LOG", "RESET")
    admin.close()
    return Settings.load(env={}, redis_url=tls.url, **TEST_SETTINGS)


@pytest.fixture
def admin(tls: TlsServer) -> Iterator[redis.Redis]:
    """The default user's client. At teardown, the test fails if the server refused the
    limited user anything (ACL LOG), even where redwork swallowed the error."""
    client = tls.admin()
    yield client
    denied = client.execute_command("ACL", "LOG")
    client.close()
    assert denied == [], f"commands refused to {USER}: {denied}"


def test_workers_run_jobs_over_tls_as_the_limited_user(
    app: Redwork, admin: redis.Redis, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    added = tasks.add.enqueue(2, 3)
    failing = tasks.boom.enqueue("over tls")
    staging = tasks.stage_in_store.enqueue(STATE_PREFIX, "entry")
    spawn_worker()
    assert added.result(timeout=30) == 5  # waits on the job's channel (SUBSCRIBE)
    with pytest.raises(JobFailed, match="over tls"):
        failing.result(timeout=30)
    record = failing.info()
    assert (record.state, record.attempt) == (JobState.FAILED, 3)
    assert admin.zscore(Queue("default").failed, failing.id) is not None
    # The staged write committed with the job's completion, in the same script call.
    assert staging.result(timeout=30) == "staged"
    entry = app.state("staging", key_prefix=STATE_PREFIX).get("entry")
    assert entry is not None and (entry.value, entry.etag) == (staging.id, 1)


def test_state_store_writes_and_reads_as_the_limited_user(app: Redwork) -> None:
    store = app.state("tls", key_prefix=STATE_PREFIX)
    assert store.save("direct", {"n": 1}) == 1
    assert store.save("direct", {"n": 2}, etag=1) == 2
    item = store.get("direct")
    assert item is not None and (item.value, item.etag) == ({"n": 2}, 2)


def connect_once(url: str) -> redis.Redis:
    """A client that does not retry: a refused connection would be retried for seconds."""
    return redis.Redis.from_url(url, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def test_the_tls_port_speaks_only_tls_with_the_cas_certificate(tls: TlsServer) -> None:
    trusted = connect_once(tls.url)
    assert trusted.ping()
    trusted.close()
    plain = connect_once(f"redis://{USER}:{PASSWORD}@127.0.0.1:{tls.tls_port}/0")
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    # Without the CA the server's certificate is not trusted: it is really checked.
    untrusted = connect_once(tls.url.partition("?")[0])
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        untrusted.ping()
    untrusted.close()


def test_the_user_is_limited_to_redworks_keys_channels_and_commands(tls: TlsServer) -> None:
    client = redis.Redis.from_url(tls.url)
    assert client.set("rw:probe", "x") and client.get("rw:probe") == b"x"
    refused: list[Callable[[], object]] = [
        lambda: client.get("other:key"),
        lambda: client.set("other:key", "x"),
        lambda: client.publish("other:channel", "x"),
        lambda: client.eval("return redis.call('GET', KEYS[1])", 1, "other:key"),
        lambda: client.flushall(),
        lambda: client.config_get("dir"),
        lambda: client.function_flush(),
    ]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    client.close()


def test_redwork_info_runs_over_tls_as_the_limited_user(
    app: Redwork, admin: redis.Redis, tls: TlsServer
) -> None:
    app.enqueue_many(tasks.add.options(queue="tlsq").prepare(i, i) for i in range(3))
    out = ok(run_cli("info", redis_url=tls.url))
    assert table_row(out, "tlsq")[1:3] == ["3", "0"]  # waiting, held


def test_the_http_api_runs_over_tls_as_the_limited_user(
    admin: redis.Redis,
    spawn_api: Callable[..., ApiProcess],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    spawn_worker()  # starts while the API does
    # The API starts only once its live hub has PSUBSCRIBEd to every queue's events.
    api = spawn_api()
    with httpx.Client(base_url=api.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"ok": True}  # a PING as the user
        created = http.post("/api/jobs", json={"task": "add", "args": [4, 5]})
        assert created.status_code == 201, created.text
        final = wait_done(http, created.json()["id"])
    assert (final["state"], final["job"]["result"]) == ("completed", 9)
