"""The code's own checks run with the suite: ruff on everything, mypy --strict on src/."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing_to_report() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_ruff_formatted() -> None:
    result = _run(
        sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "bench", "examples"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_package() -> None:
    result = _run(sys.executable, "-m", "mypy", "--strict", "src/redwork")
    assert result.returncode == 0, result.stdout + result.stderr
