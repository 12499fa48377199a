# Why ViTs and CNNs quantize differently, from each FP32 checkpoint: per-module-group PTQ
# sensitivity and per-tensor variation statistics (qatstudy.analysis), then their tidy tables.

from qatstudy.config import SENSITIVITY_QUANT_OPTIONS

ANALYSIS_TABLES = [f"{TABLES_DIR}/{name}.csv" for name in ("sensitivity", "variation", "variation_summary")]
SENSITIVITY_SETTINGS = canonical(
    {
        "bits": config["analysis"]["sensitivity_bits"],
        "groups": config["analysis"]["sensitivity_groups"],
        "val_images": config["analysis"]["val_images"],
        "quant": {k: config["quant"][k] for k in SENSITIVITY_QUANT_OPTIONS},
        "calibration": config["calibration"],
    }
)
VARIATION_SETTINGS = {"images": config["analysis"]["variation_images"]}


rule sensitivity:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        f"{RUN}/analysis/sensitivity.json",
    log:
        f"{LOGS}/sensitivity/{{model}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/sensitivity/{{model}}_seed{{seed}}.tsv"
    conda:
        "../envs/qatstudy.yaml"
    threads: cpu_share(config["threads"]["eval"])
    params:
        identity=identity,
        settings=SENSITIVITY_SETTINGS,
        config_digest=model_digest("fp32", sensitivity=SENSITIVITY_SETTINGS),
    script:
        "../workflow_scripts/sensitivity.py"


rule variation:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        f"{RUN}/analysis/variation.json",
    log:
        f"{LOGS}/variation/{{model}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/variation/{{model}}_seed{{seed}}.tsv"
    conda:
        "../envs/qatstudy.yaml"
    threads: cpu_share(config["threads"]["eval"])
    params:
        identity=identity,
        settings=VARIATION_SETTINGS,
        config_digest=model_digest("fp32", variation=VARIATION_SETTINGS),
    script:
        "../workflow_scripts/variation.py"


rule analysis_tables:
    input:
        sensitivity=fp32_runs(f"{RUN}/analysis/sensitivity.json"),
        variation=fp32_runs(f"{RUN}/analysis/variation.json"),
    output:
        sensitivity=ANALYSIS_TABLES[0],
        variation=ANALYSIS_TABLES[1],
        variation_summary=ANALYSIS_TABLES[2],
    log:
        f"{LOGS}/analysis_tables.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    script:
        "../workflow_scripts/analysis_tables.py"
