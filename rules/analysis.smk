# Why ViTs and CNNs quantize differently, from each FP32 checkpoint: per-module-group PTQ
# sensitivity and per-tensor variation statistics (qatstudy.analysis), then their tidy tables.

from qatstudy.workflow import SENSITIVITY_QUANT_OPTIONS

ANALYSIS_TABLES = ["results/tables/sensitivity.csv", "results/tables/variation.csv",
                   "results/tables/variation_summary.csv"]
SENSITIVITY_SETTINGS = canonical({"bits": config["analysis"]["sensitivity_bits"],
                                  "groups": config["analysis"]["sensitivity_groups"],
                                  "test_images": config["analysis"]["test_images"],
                                  "quant": {k: config["quant"][k] for k in SENSITIVITY_QUANT_OPTIONS},
                                  "calibration": config["calibration"]})
VARIATION_SETTINGS = {"images": config["analysis"]["variation_images"]}


rule sensitivity:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        f"{RUN}/analysis/sensitivity.json",
    params:
        identity=identity,
        settings=SENSITIVITY_SETTINGS,
        config_digest=config_digest(config, "fp32", sensitivity=SENSITIVITY_SETTINGS),
    threads: cpu_share(config["threads"]["eval"])
    log:
        "logs/sensitivity/{model}_seed{seed}.log",
    benchmark:
        "benchmarks/sensitivity/{model}_seed{seed}.tsv"
    script:
        "../workflow_scripts/sensitivity.py"


rule variation:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        f"{RUN}/analysis/variation.json",
    params:
        identity=identity,
        settings=VARIATION_SETTINGS,
        config_digest=config_digest(config, "fp32", variation=VARIATION_SETTINGS),
    threads: cpu_share(config["threads"]["eval"])
    log:
        "logs/variation/{model}_seed{seed}.log",
    benchmark:
        "benchmarks/variation/{model}_seed{seed}.tsv"
    script:
        "../workflow_scripts/variation.py"


rule analysis_tables:
    input:
        sensitivity=run_files(RUN + "/analysis/sensitivity.json"),
        variation=run_files(RUN + "/analysis/variation.json"),
    output:
        sensitivity=ANALYSIS_TABLES[0],
        variation=ANALYSIS_TABLES[1],
        variation_summary=ANALYSIS_TABLES[2],
    params:
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    log:
        "logs/analysis_tables.log",
    script:
        "../workflow_scripts/analysis_tables.py"
