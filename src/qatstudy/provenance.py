"""Where a result came from: the code's git commit (and whether its tree was dirty), package versions, the
hardware, the config digest (`qatstudy.config.config_digest`) and the seed.

Every result file the workflow writes (metrics, ONNX, benchmark and analysis JSONs) carries this record under
"provenance"; the tidy tables carry its config hash and commit as columns, and refuse to tabulate results of one
kind made under different configs (`check_one_config`).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
from collections import defaultdict
from pathlib import Path

import psutil

from .io import read_json

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "numpy",
    "snakemake",
    "qatstudy",
    "tensorrt",
)
CODE = Path(__file__).resolve().parent  # the package's source; its git checkout is the study's code
# the workflow's own published outputs: writing them does not make the code dirty
OUTPUTS = "results"
PROVENANCE_COLUMNS = ["config_hash", "git_commit", "git_dirty"]  # what the tidy tables carry per row
_SHOWN_FILES = 5  # files named per config hash in the mixed-config error


def _git(args: list[str], cwd: Path) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(path: Path = CODE) -> dict:
    """The commit checked out where `path` lies, and whether anything but `results/` differs from it (tracked
    changes and untracked files git does not ignore); both None outside a git checkout."""
    top = _git(["rev-parse", "--show-toplevel"], path)
    commit = _git(["rev-parse", "HEAD"], path) if top else None
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git(["status", "--porcelain", "--", ".", f":(exclude){OUTPUTS}"], Path(top))
    return {"git_commit": commit, "git_dirty": None if status is None else status != ""}


def package_versions() -> dict:
    """Installed versions of the packages a result depends on (None where one is not installed)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpus() -> list[str]:
    """The NVIDIA GPUs this process may use, as nvidia-smi names them (none without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def hardware() -> dict:
    return {
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": _gpus(),
    }


def provenance(
    config_digest: dict | None = None, seed: int | None = None, qat_seed: int | None = None, model: str | None = None
) -> dict:
    """The provenance record of a result made now, in this process (in a SLURM job: its job id). `model`: the model
    whose config (its own overrides applied) the digest hashes."""
    digest = config_digest or {}
    return {
        **git_state(),
        "packages": package_versions(),
        "hardware": hardware(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "config_scope": digest.get("scope"),
        "config_hash": digest.get("hash"),
        "config_model": model,
        "seed": seed,
        "qat_seed": qat_seed,
    }


def with_tensorrt(record: dict | None, version: str | None) -> dict | None:
    """`record` for a result measured with TensorRT `version` on a device (trtexec's banner there)."""
    return None if record is None else {**record, "packages": {**record["packages"], "tensorrt": version}}


def provenance_columns(result: dict) -> dict:
    """A result's provenance as the tidy tables' columns (empty for a result written without one)."""
    record = result.get("provenance") or {}
    return {column: record.get(column) for column in PROVENANCE_COLUMNS}


def _named(paths: list[str]) -> str:
    shown = ", ".join(sorted(paths)[:_SHOWN_FILES])
    return shown + (f" and {len(paths) - _SHOWN_FILES} more" if len(paths) > _SHOWN_FILES else "")


def mixed_configs(results: dict[str, dict]) -> list[str]:
    """Descriptions of the kinds of result (config scope, model and ablation arm) whose files carry more than one
    config hash, naming each hash and the files that carry it, and of files without provenance among files with one.
    `results` maps file names to their contents.

    Hashes are compared per model because each model's hash covers its own overrides (config.config_digest), so
    models of one study may differ. A result's model is the one its provenance names, else its own `model` field
    (results written before provenance named it, whose hashes are study-wide)."""
    problems = []
    bare = [path for path, result in results.items() if not result.get("provenance")]
    if bare and len(bare) < len(results):
        problems.append(
            f"{len(bare)} results carry no provenance (written before results recorded it), so their "
            f"config is unknown: {_named(bare)}"
        )
    kinds = defaultdict(lambda: defaultdict(list))
    for path, result in results.items():
        if result.get("provenance"):
            record = result["provenance"]
            model = record.get("config_model") or result.get("model")
            kinds[(record["config_scope"], model, result.get("arm"))][record["config_hash"]].append(path)
    for (scope, model, arm), by_hash in kinds.items():
        if len(by_hash) > 1:
            kind = (
                f"'{scope}' results"
                + (f" of model '{model}'" if model else "")
                + (f" of ablation arm '{arm}'" if arm else "")
            )
            problems.append(
                f"{kind} come from {len(by_hash)} different configs; "
                + "; ".join(
                    f"config hash {config_hash}: {_named(paths)}" for config_hash, paths in sorted(by_hash.items())
                )
            )
    return problems


def check_one_config(files: list[str], *, allow_mixed: bool, log=print) -> None:
    """Refuse to tabulate result files of one kind made under different configs, unless `allow_mixed` (the config's
    aggregate.allow_mixed_config), in which case each mix is only logged."""
    problems = mixed_configs({str(f): read_json(f) for f in files})
    if problems and not allow_mixed:
        raise ValueError(
            "refusing to mix results from different configs:\n  "
            + "\n  ".join(problems)
            + "\nRerun the stale results (snakemake --forcerun <rule>, or delete them), or set "
            "aggregate.allow_mixed_config: true to tabulate them anyway."
        )
    for problem in problems:
        log(f"warning (aggregate.allow_mixed_config): {problem}")
