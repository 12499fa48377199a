# Names and parameter helpers shared by every stage. Config is already schema-validated.

import math
import os
from pathlib import Path

import yaml
from snakemake.utils import available_cpu_count

from qatstudy.data import raw_file_names
from qatstudy.config import (
    bit_tags,
    canonical,
    config_digest,
    deployed_variants,
    merged_settings,
    model_identity,
    model_objective,
    model_quant,
    ptq_seeds,
    qat_seeds,
    study_name,
)
from qatstudy.job_runner import WORKFLOW_CORES_ENV

# Every study has its own folders, so that running another config never touches the default study's results.
STUDY = study_name(config, workflow.overwrite_configfiles)
DATASET = config["dataset"]["name"]
RAW = f"data/{DATASET}/raw"  # the downloaded files, checksummed, shared by every study of the dataset
STUDY_RUNS = f"runs/{STUDY}"
SPLITS = f"{STUDY_RUNS}/splits.npz"
TABLES_DIR = f"results/{STUDY}/tables"
FIGURES_DIR = f"results/{STUDY}/figures"
LOGS = f"logs/{STUDY}"
BENCHMARKS = f"benchmarks/{STUDY}"
MODELS = list(config["models"])
SCHEMA = yaml.safe_load(Path(workflow.basedir, "schemas", "config.schema.yaml").read_text())
# checked now: a bad key fails the load
MODEL_QUANT = {model: model_quant(config, model, SCHEMA) for model in MODELS}
MODEL_OBJECTIVE = {model: model_objective(config, model, SCHEMA) for model in MODELS}
FP32_SEEDS = config["seeds"]["fp32"]
BIT_TAGS = bit_tags(config["bits"])
QAT_SEEDS = qat_seeds(config)  # per bit-width tag
PTQ_SEEDS = ptq_seeds(config)
RUN = f"{STUDY_RUNS}/{{model}}/seed{{seed}}"  # one FP32 model and everything made from it
TABLES = [
    f"{TABLES_DIR}/{name}"
    for name in (
        "accuracy.csv",
        "bench.csv",
        "summary.md",
        "oscillation.csv",
        "findings.csv",
        "findings.md",
        "models.tex",
        "top1_by_bits.tex",
        "deployment.tex",
    )
]
FIGURE_NAMES = [
    "accuracy_by_bits",
    "drop_by_bits",
    "accuracy_vs_latency",
    "size_reduction",
    "oscillation",
    "onnx_vs_pytorch",
]
FIGURE_EXTENSIONS = ["png", "svg", "html", "caption.md"]
SENSITIVITY_FIGURES = expand(f"{FIGURES_DIR}/sensitivity.{{ext}}", ext=FIGURE_EXTENSIONS)
FIGURES = expand(f"{FIGURES_DIR}/{{name}}.{{ext}}", name=FIGURE_NAMES, ext=FIGURE_EXTENSIONS) + SENSITIVITY_FIGURES
# Exported and benchmarked: the first FP32 seed's model and its QAT models of the first QAT seed (deployment speed
# does not depend on the seed).
DEPLOY_SEED = FP32_SEEDS[0]
DEPLOYED = deployed_variants(config)
# PTQ and QAT runs of one FP32 model (rules/quantize.smk), per bit-width tag and QAT seed
PTQ_RUN = f"{RUN}/ptq_{{tag}}_q{{qseed}}"
QAT_RUN = f"{RUN}/qat_{{tag}}_q{{qseed}}"
# TensorRT (rules/trt.smk): its settings and the engines' batch sizes; TRT_BENCH, the benchmark files the bench table
# reads (none unless trt.transport is set), follows the helpers below
TRT = config["trt"]
TRT_BATCHES = config["bench"]["batch_sizes"]


wildcard_constraints:
    model="|".join(MODELS),
    seed=r"\d+",
    qseed=r"\d+",
    tag=r"w\d+a\d+",
    variant=r"fp32|qat_w\d+a\d+_q\d+",


CPUS = available_cpu_count()
# On a cluster each job gets an allocation of the CPUs it declares; on one machine all jobs share its CPUs within
# --cores. A cluster run is one with --jobs (how many cluster jobs at once; a cluster profile sets it; the executor
# is not known yet while the workflow loads), or a job it started. On one machine, give --cores alone.
CLUSTER = workflow.nodes is not None or workflow.remote_exec
# --cores; runs that execute no jobs (--report, --lint) may leave it unset
CORES = workflow.resource_settings.cores or CPUS
if not CLUSTER:
    os.environ[WORKFLOW_CORES_ENV] = str(CORES)  # jobs inherit it: job_runner.job_threads


def cpu_share(cpus):
    """The threads a job running `cpus` threads declares. On one machine: the --cores budget it must reserve so that
    jobs together never use more CPUs than this machine has, whatever --cores says (jobs scale back:
    job_runner.job_threads). On a cluster: `cpus`, what its allocation gets (cpus-per-task)."""
    if CLUSTER:
        return cpus
    return max(1, min(CORES, math.ceil(cpus * CORES / CPUS)))


def alone(cpus):
    """The threads of a job that must run without neighbours (timings) on `cpus` threads: all of --cores on one
    machine; on a cluster `cpus`, and the profile asks for a node of its own (`--profile slurm`: --exclusive)."""
    return cpus if CLUSTER else CORES


def model_digest(stage, **settings):
    """The config digest of a model's result of `stage` (fp32, ptq or qat): the stage's sections with the model's own
    overrides applied, plus the rule's own settings."""
    return lambda wildcards: config_digest(config, stage, model=wildcards.model, **settings)


def variant_digest(**settings):
    """The config digest of a deployed variant's result: its training stage's (fp32, or qat for qat_<tag>_q<seed>)
    plus the rule's own settings."""
    return lambda wildcards: model_digest(wildcards.variant.split("_", 1)[0], **settings)(wildcards)


def identity(wildcards):
    return model_identity(wildcards.model, config)


def train_settings(stage):
    return lambda wildcards: merged_settings(config, stage, wildcards.model)


def quantized_runs(pattern, seeds=QAT_SEEDS):
    """Every model x FP32 seed x bit-width x that bit-width's seeds (QAT_SEEDS or PTQ_SEEDS) instance of a pattern
    with {model}, {seed}, {tag} and {qseed}."""
    return [
        pattern.format(model=m, seed=s, tag=t, qseed=q)
        for m in MODELS
        for s in FP32_SEEDS
        for t in BIT_TAGS
        for q in seeds[t]
    ]


def fp32_runs(pattern):
    """Every model x FP32 seed instance of a pattern with {model} and {seed}."""
    return [pattern.format(model=m, seed=s) for m in MODELS for s in FP32_SEEDS]


def deployed_runs(pattern):
    """Every model's deployed variants (DEPLOYED, of FP32 seed DEPLOY_SEED) in a pattern with {model}, {seed} and
    {variant}."""
    return [pattern.format(model=m, seed=DEPLOY_SEED, variant=v) for m in MODELS for v in DEPLOYED]


def float_precisions(variant):
    """The TensorRT precisions of a deployed variant's float layers: the FP32 model once per trt.float_baselines, a
    quantized model once, in trt.float_precision."""
    return TRT["float_baselines"] if variant == "fp32" else [TRT["float_precision"]]


def per_batch(pattern):
    """A TensorRT pattern with {batch} for each engine batch size, other wildcards kept."""
    return expand(pattern, batch=TRT_BATCHES, allow_missing=True)


# the TensorRT benchmark files the bench table reads (rules/aggregate.smk)
TRT_BENCH = (
    [
        f"{STUDY_RUNS}/{m}/seed{DEPLOY_SEED}/{v}/bench_trt_{p}.json"
        for m in MODELS
        for v in DEPLOYED
        for p in float_precisions(v)
    ]
    if TRT["transport"]
    else []
)


def table_report(path, caption):
    return report(path, caption=f"../report/tables/{caption}.rst", category="Tables")


def figure_captions(names):
    """The caption files (report/figures/<name>.rst), inputs so that editing one re-renders its figure."""
    return [workflow.source_path(f"../report/figures/{name}.rst") for name in names]


def figure_outputs(names):
    """Per figure: the print PNG, the caption as Markdown, and the SVG and interactive HTML, which the report
    embeds under the same caption."""
    outputs = []
    for name in names:
        flags = dict(caption=f"../report/figures/{name}.rst", category="Figures")
        svg = report(f"{FIGURES_DIR}/{name}.svg", labels={"figure": name, "format": "SVG"}, **flags)
        html = report(f"{FIGURES_DIR}/{name}.html", labels={"figure": name, "format": "interactive HTML"}, **flags)
        outputs += [f"{FIGURES_DIR}/{name}.png", f"{FIGURES_DIR}/{name}.caption.md", svg, html]
    return outputs
