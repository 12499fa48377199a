# Names and parameter helpers shared by every stage. Config is already schema-validated.

import math
import os
from pathlib import Path

import yaml
from snakemake.utils import available_cpu_count

from qatstudy.data import raw_file_names
from qatstudy.workflow import (WORKFLOW_CORES_ENV, bit_tags, canonical, config_digest, merged_settings, model_identity,
                                model_objective, model_quant)

DATASET = config["dataset"]["name"]
SPLITS = f"data/{DATASET}/splits.npz"
MODELS = list(config["models"])
SCHEMA = yaml.safe_load(Path(workflow.basedir, "schemas", "config.schema.yaml").read_text())
# checked now: a bad key fails the load
MODEL_QUANT = {model: model_quant(config, model, SCHEMA) for model in MODELS}
MODEL_OBJECTIVE = {model: model_objective(config, model, SCHEMA) for model in MODELS}
SEEDS = config["seeds"]
BIT_TAGS = bit_tags(config["bits"])
RUN = "runs/{model}/seed{seed}"
TABLES = ["results/tables/accuracy.csv", "results/tables/bench.csv", "results/tables/summary.md",
          "results/tables/oscillation.csv", "results/tables/models.tex", "results/tables/top1_by_bits.tex",
          "results/tables/deployment.tex"]
FIGURE_NAMES = ["accuracy_by_bits", "accuracy_vs_latency", "size_reduction", "oscillation", "onnx_vs_pytorch"]
FIGURE_EXTENSIONS = ["png", "svg", "html", "caption.md"]
SENSITIVITY_FIGURES = expand("results/figures/sensitivity.{ext}", ext=FIGURE_EXTENSIONS)
FIGURES = expand("results/figures/{name}.{ext}", name=FIGURE_NAMES, ext=FIGURE_EXTENSIONS) + SENSITIVITY_FIGURES
DEPLOYED = ["fp32"] + [f"qat_{tag}" for tag in BIT_TAGS]  # the variants exported and benchmarked


wildcard_constraints:
    model="|".join(MODELS),
    seed=r"\d+",
    tag=r"w\d+a\d+",
    variant=r"fp32|qat_w\d+a\d+",


CPUS = available_cpu_count()
# On a cluster each job gets an allocation of the CPUs it declares; on one machine all jobs share its CPUs within
# --cores. A cluster run is one with --jobs (how many cluster jobs at once; a cluster profile sets it; the executor
# is not known yet while the workflow loads), or a job it started. On one machine, give --cores alone.
CLUSTER = workflow.nodes is not None or workflow.remote_exec
# --cores; runs that execute no jobs (--report, --lint) may leave it unset
CORES = workflow.resource_settings.cores or CPUS
if not CLUSTER:
    os.environ[WORKFLOW_CORES_ENV] = str(CORES)  # jobs inherit it: workflow.job_threads


def cpu_share(cpus):
    """The threads a job running `cpus` threads declares. On one machine: the --cores budget it must reserve so that
    jobs together never use more CPUs than this machine has, whatever --cores says (jobs scale back:
    workflow.job_threads). On a cluster: `cpus`, what its allocation gets (cpus-per-task)."""
    if CLUSTER:
        return cpus
    return max(1, min(CORES, math.ceil(cpus * CORES / CPUS)))


def alone(cpus):
    """The threads of a job that must run without neighbours (timings) on `cpus` threads: all of --cores on one
    machine; on a cluster `cpus`, and the profile asks for a node of its own (profiles/slurm: --exclusive)."""
    return cpus if CLUSTER else CORES


def variant_digest(**settings):
    """The config digest of a deployed variant's result: its training stage's (fp32, or qat for qat_<tag>) plus the
    rule's own settings."""
    return lambda wildcards: config_digest(config, wildcards.variant.split("_", 1)[0], **settings)


def identity(wildcards):
    return model_identity(wildcards.model, config)


def train_settings(stage):
    return lambda wildcards: merged_settings(config, stage, wildcards.model)


def run_files(pattern, variants=None):
    """Every model x seed (x variant) instance of a per-run file pattern."""
    variants = variants if variants is not None else [None]
    return [
        pattern.format(model=m, seed=s, variant=v)
        for m in MODELS
        for s in SEEDS
        for v in variants
    ]
