# Why ViTs and CNNs quantize differently, from each FP32 checkpoint: per-module-group PTQ
# sensitivity and per-tensor variation statistics (qatstudy.analysis), then their tidy tables.

from qatstudy.workflow import SENSITIVITY_QUANT_OPTIONS

ANALYSIS_TABLES = ["results/tables/sensitivity.csv", "results/tables/variation.csv",
                   "results/tables/variation_summary.csv"]


rule sensitivity:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        f"{RUN}/analysis/sensitivity.json",
    params:
        identity=identity,
        bits=config["analysis"]["sensitivity_bits"],
        groups=config["analysis"]["sensitivity_groups"],
        test_images=config["analysis"]["test_images"],
        quant=canonical({k: config["quant"][k] for k in SENSITIVITY_QUANT_OPTIONS}),
        calibration=canonical(config["calibration"]),
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
        images=config["analysis"]["variation_images"],
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
    log:
        "logs/analysis_tables.log",
    script:
        "../workflow_scripts/analysis_tables.py"
