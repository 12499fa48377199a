"""The gates of .pre-commit-config.yaml, in CI: `snakemake --lint`, `snakefmt --check .`, `ruff check .` and
`ruff format --check .` from the repository root, with the project environment's tools (the dev group of uv.lock),
must find nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATES = {
    "snakemake --lint": ["snakemake", "--lint"],
    "snakefmt --check": ["snakefmt", "--check", "."],
    "ruff check": ["ruff", "check", "."],
    "ruff format --check": ["ruff", "format", "--check", "."],
    "pre-commit validate-config": ["pre_commit", "validate-config", ".pre-commit-config.yaml"],
}


@pytest.mark.parametrize("gate", GATES)
def test_gate_finds_nothing(gate):
    module, *args = GATES[gate]
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{gate} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
