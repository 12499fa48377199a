"""Glue between Snakemake and the package: config lookups and the entry-point wrapper."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

from .settings import TrainSettings

_SETTING_KEYS = set(TrainSettings.__dataclass_fields__)


def canonical(value):
    """`value` with every mapping's keys sorted, recursively.

    Snakemake compares rule params by their text, so the same settings written in another key
    order would otherwise count as changed and rerun every job that uses them.
    """
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def merged_settings(config: dict, stage: str, model: str) -> dict:
    """Global `train` / `qat` settings with the model's own overrides applied."""
    settings = {**config[stage], **config["models"][model].get(stage, {})}
    return canonical({k: v for k, v in settings.items() if k in _SETTING_KEYS})


def qat_objective(config: dict) -> dict:
    """QATSettings fields from the config's distillation, regularizer and oscillation sections."""
    distill, reg, osc = config["distillation"], config["regularizer"], config["oscillation"]
    return canonical({"distill_weight": distill["weight"], "distill_temperature": distill["temperature"],
            "crops": distill["crops"], "regularizer_weight": reg["weight"], "oscillation_momentum": osc["momentum"],
            "oscillation_threshold": osc["threshold"], "freeze_threshold": osc["freeze_threshold"]})


def model_identity(model: str, config: dict) -> dict:
    spec = config["models"][model]
    return canonical({"model": model, "family": spec["family"], "arch": spec["arch"], "kwargs": spec.get("kwargs", {})})


WORKFLOW_CORES_ENV = "QATSTUDY_WORKFLOW_CORES"


def job_threads(snakemake) -> int:
    """Threads a job may use: its share of --cores, scaled to the CPUs this machine really has.

    A job only sees its own thread count (its `resources._cores` is that too), so the workflow's
    --cores comes from the environment variable common.smk sets when the workflow loads.
    """
    cpus = len(os.sched_getaffinity(0))
    cores = int(os.environ.get(WORKFLOW_CORES_ENV, cpus))
    return max(1, min(cpus, int(snakemake.threads * min(1.0, cpus / cores))))


def run(snakemake, main, *, uses_torch: bool = True) -> None:
    """Run `main(snakemake, log)` with stdout/stderr in the rule's log file and its thread budget."""
    log_path = snakemake.log[0] if snakemake.log else None
    stream = open(log_path, "w", buffering=1) if log_path else sys.stderr
    with stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        def log(message: str) -> None:
            print(message, flush=True)

        try:
            if uses_torch:
                from .models import set_threads

                threads = job_threads(snakemake)
                set_threads(threads)
                log(f"torch runs on {threads} thread(s)")
            main(snakemake, log)
        except Exception:
            traceback.print_exc()
            raise
