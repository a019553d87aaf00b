"""`pip install redwork` from a built wheel works in a fresh virtual environment, and the
CLI's version and shell completion answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from redwork import __version__
from tests.conftest import ROOT, valkey_servers_under

pytestmark = pytest.mark.timeout(600)


def run(*command: str | Path, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("REDWORK_")}, **env},
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the source (a build in place would write build/
    and an egg-info into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source, cwd=source)
    (built,) = out.glob("redwork-*.whl")
    return built


def test_the_wheel_holds_the_scripts_the_dashboard_and_the_type_marker(wheel: Path) -> None:
    assert wheel.name.startswith(f"redwork-{__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = sorted(p.name for p in (ROOT / "src/redwork/scripts").glob("*.lua"))
    assert {f"redwork/scripts/{name}" for name in scripts} <= names
    assert any(n.startswith("redwork/scripts/includes/") for n in names)
    dashboard = sorted(p.name for p in (ROOT / "src/redwork/dashboard").iterdir())
    assert {f"redwork/dashboard/{name}" for name in dashboard} <= names
    assert "redwork/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "redwork = redwork.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin/python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    assert run(venv / "bin/redwork", "--version", cwd=tmp_path).strip() == (
        f"redwork, version {__version__}"
    )
    # The installed package, not this checkout: run from a folder without src/.
    out = run(
        venv / "bin/redwork", "demo", "--iterations", "10", "--workers", "2",
        cwd=tmp_path, TMPDIR=str(tmp_path),
    )  # fmt: skip
    assert "jobs: 10 completed, 0 failed" in out
    assert valkey_servers_under(tmp_path) == []


def test_shell_completion_scripts_and_answers() -> None:
    redwork = Path(sys.executable).parent / "redwork"
    for shell, marker in [("bash", "complete -o nosort -F"), ("zsh", "#compdef redwork"),
                          ("fish", "complete --no-files --command redwork")]:  # fmt: skip
        assert marker in run(redwork, "completion", shell, cwd=ROOT)
    answer = run(
        redwork, cwd=ROOT, COMP_WORDS="redwork wor", COMP_CWORD="1",
        _REDWORK_COMPLETE="bash_complete",
    )  # fmt: skip
    assert answer.split() == ["plain,worker", "plain,workflow"]


def test_the_changelog_has_a_section_for_this_version() -> None:
    headings = [
        line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")
    ]
    assert any(h.split()[1] == __version__ for h in headings), headings
