# qat-study: QAT of Vision Transformers versus CNNs, from data download to deployment.
#
#   download -> split -> train_fp32 -> ptq / qat (per bit-width) -> export (ONNX Q/DQ)
#            -> bench (onnxruntime CPU) -> aggregate (tables) -> figures
#
# Targets: all (tables and figures), bench (benchmark table), figures (charts only).

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
include: "rules/aggregate.smk"


rule all:
    input:
        TABLES,
        FIGURES,


rule bench:
    input:
        "results/tables/bench.csv",


rule figures:
    input:
        FIGURES,
