"""The runner of Snakemake jobs: what every entry point in workflow_scripts/ calls to run its main function with the
rule's log (`run`), its thread budget (`job_threads`) and the provenance record of its result (`job_provenance`).
The config lookups the rules use are qatstudy.config's."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

from .provenance import provenance


def job_provenance(snakemake) -> dict:
    """The provenance record of a job's result: its rule's `config_digest` param, its `model` (whose config that
    digest hashes) and its seed wildcards (the FP32 model's `seed`, and the `qseed` of a PTQ or QAT run)."""
    seeds = {
        name: int(snakemake.wildcards[key])
        for name, key in (("seed", "seed"), ("qat_seed", "qseed"))
        if snakemake.wildcards.get(key) is not None
    }
    return provenance(snakemake.params.config_digest, model=snakemake.wildcards.get("model"), **seeds)


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
