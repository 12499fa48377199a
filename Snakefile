# qat-study: QAT of Vision Transformers versus CNNs, from data download to deployment.
#
#   download -> split -> train_fp32 -> ptq / qat (per bit-width) -> export (ONNX Q/DQ)
#            -> bench (onnxruntime CPU) -> bench_table, accuracy_tables -> summary_tables, findings -> figures
#
# Targets: all (tables and figures), bench (the benchmark table alone: no PTQ job), figures (charts only),
#          ablation (the QAT ablation table), analysis (module sensitivity and variation tables).

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from qatstudy.preflight import (
    ConfigError,
    check_models,
    default_cache_path,
    interrupted_run_hint,
    validate_config,
)

min_version("9.0")


configfile: "config.yaml"


# Checked now, so that a bad config stops `snakemake -n` in seconds with one message naming its key: the schema
# (which also fills in defaults), then every model built once in timm on the meta device (qatstudy.preflight).
try:
    validate_config(config, Path(workflow.basedir, "schemas", "config.schema.yaml"))
    check_models(config, cache_path=default_cache_path())
except ConfigError as err:
    raise WorkflowError(str(err)) from None
if workflow.is_main_process and "--unlock" not in sys.argv and interrupted_run_hint():
    print(interrupted_run_hint(), file=sys.stderr)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/quantize.smk"
include: "rules/export.smk"
include: "rules/bench.smk"
include: "rules/trt.smk"
include: "rules/aggregate.smk"
include: "rules/analysis.smk"
include: "rules/ablation.smk"


rule all:
    input:
        TABLES,
        ANALYSIS_TABLES,
        FIGURES,


rule bench:
    input:
        f"{TABLES_DIR}/bench.csv",


rule figures:
    input:
        FIGURES,


rule ablation:
    input:
        rules.ablation_table.output,
        rules.ablation_findings.output,


rule analysis:
    input:
        ANALYSIS_TABLES,
        SENSITIVITY_FIGURES,
