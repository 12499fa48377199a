"""The commands the README gives, exactly as it gives them: `snakemake --profile <name>` from the repository root
(dry runs), and the `qatstudy` console script's help.

Snakemake looks a profile's name up in the working directory, ~/.config/snakemake and /etc/xdg/snakemake, never in
profiles/ (snakemake.cli.get_profile_dir): the repository root links each name to its folder under profiles/. The
tests hide the user's and the system's profile folders, so a name can only be found in the working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qatstudy.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent  # the environment's console scripts: snakemake, qatstudy


def snakemake_by_profile_name(profile: str, workdir: Path, *args: str) -> str:
    """`snakemake --profile <profile> …` run from the repository root on the tiny config (results in `workdir`): its
    output; fails the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env.update(XDG_CONFIG_HOME=str(workdir / "no-user-config"), XDG_CONFIG_DIRS=str(workdir / "no-site-config"))
    result = subprocess.run(
        [
            str(BIN / "snakemake"),
            "--profile",
            profile,
            *args,
            "--dry-run",
            "--directory",
            str(workdir),
            "--configfile",
            str(TINY),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake --profile {profile} failed:\n{output[-5000:]}"
    assert f"Using profile {profile} for setting default command line arguments." in output
    return output


@pytest.mark.parametrize("profile", ["jetson", "local-gpu"])
def test_trt_profile_by_name_adds_the_tensorrt_jobs(profile, tmp_path):
    # tiny.yaml has no trt.transport: only the profile's config makes `bench` build and benchmark engines
    output = snakemake_by_profile_name(profile, tmp_path, "bench")
    jobs = set(re.findall(r"^rule (\w+):", output, re.MULTILINE))
    assert {"trt_build", "trt_bench", "bench_cpu", "bench_table"} <= jobs, jobs


def test_slurm_profile_by_name_sets_the_rules_resources(tmp_path):
    output = snakemake_by_profile_name("slurm", tmp_path, "runs/tiny/vit/seed0/fp32/metrics.json")
    resources = re.search(r"^rule train_fp32:.*?^\s+resources: ([^\n]*)", output, re.MULTILINE | re.DOTALL).group(1)
    # the profile's set-resources for train_fp32, at the first attempt
    assert {"mem_mb=16000", "runtime=480", "gpu=1"} <= set(resources.split(", ")), resources


@pytest.mark.parametrize("args", [[], *([name] for name in SUBCOMMANDS)], ids=lambda args: " ".join(args) or "qatstudy")
def test_console_script_help(args):
    result = subprocess.run([str(BIN / "qatstudy"), *args, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['qatstudy', *args])} ")
    if not args:
        assert all(name in result.stdout for name in SUBCOMMANDS)
