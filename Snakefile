# qat-study: QAT of Vision Transformers versus CNNs, from data download to deployment.
#
#   download -> split -> train_fp32 -> ptq / qat (per bit-width) -> export (ONNX Q/DQ)
#            -> bench (onnxruntime CPU) -> bench_table, accuracy_tables -> summary_tables, findings -> figures
#
# Targets: all (tables and figures), bench (the benchmark table alone: no PTQ job), figures (charts only),
#          ablation (the QAT ablation table), analysis (module sensitivity and variation tables).

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


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
