"""The code's own consistency: ruff (lint and format) and mypy, configured in pyproject.toml,
clean on dtconvert/. Each has a twin that shows the same configuration fails on bad code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
CONFIG = str(REPO / "pyproject.toml")


def tool(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    exe = BIN / name
    if not exe.is_file():
        pytest.fail(f"{name} is not installed in {BIN}: it is pinned in the test extras (pip install -e '.[test]')")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def test_ruff_lint_is_clean():
    done = tool("ruff", "check", "dtconvert")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean():
    done = tool("ruff", "format", "--check", "dtconvert")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean():
    done = tool("mypy")  # files and settings from [tool.mypy]
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def bad_module(tmp_path: Path) -> Path:
    path = tmp_path / "bad.py"
    path.write_text('import os\n\n\ndef f(x: int) -> str:\n    return x  +  1\n')
    return path


def test_twin_ruff_fails_on_bad_code(bad_module):
    assert tool("ruff", "check", "--config", CONFIG, str(bad_module)).returncode == 1  # F401 unused import
    assert tool("ruff", "format", "--check", "--config", CONFIG, str(bad_module)).returncode == 1  # `x  +  1`


def test_twin_mypy_fails_on_bad_code(bad_module, tmp_path):
    done = tool("mypy", "--config-file", CONFIG, "--cache-dir", str(tmp_path / "cache"), str(bad_module))
    assert done.returncode == 1 and 'Incompatible return value type (got "int", expected "str")' in done.stdout, done.stdout


# The workflows users copy into their own CI, audited by zizmor (offline: no GitHub API calls).
WORKFLOWS = REPO / ".github" / "workflows"


def test_zizmor_finds_nothing_in_the_shipped_workflows():
    done = tool("zizmor", "--offline", str(WORKFLOWS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr


def test_twin_zizmor_flags_an_unpinned_action_default_permissions_and_persisted_credentials(tmp_path):
    workflow = tmp_path / ".github" / "workflows" / "bad.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "name: bad\non: push\njobs:\n  build:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n      - uses: actions/upload-artifact@v4\n        with:\n          name: x\n          path: .\n"
    )
    done = tool("zizmor", "--offline", str(workflow.parent))
    out = done.stdout + done.stderr
    assert done.returncode != 0
    for finding in ("unpinned-uses", "excessive-permissions", "artipacked"):
        assert finding in out, out
