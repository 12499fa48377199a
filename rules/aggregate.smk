# Tables from the per-run JSON files, summary tables and figures from those tables only, and what `snakemake --report`
# shows. The report helpers (table_report, figure_captions, figure_outputs) are in rules/common.smk.

LATEX_TABLES = ["models", "top1_by_bits", "deployment"]  # <TABLES_DIR>/<name>.tex
SENSITIVITY_FIGURE = "sensitivity"  # drawn from the analysis stage's sensitivity.csv, by its own rule
TABLE_FIGURES = [name for name in FIGURE_NAMES if name != SENSITIVITY_FIGURE]


# the report's front page: what the study is, and its effective configuration
report: "../report/workflow.rst"


# The benchmark table needs only the deployed variants' benchmarks, so `snakemake bench` runs no PTQ job.
rule bench_table:
    input:
        bench=deployed_runs(f"{RUN}/{{variant}}/bench_cpu.json")
        + deployed_runs(f"{RUN}/{{variant}}/bench_openvino.json")
        + TRT_BENCH,
    output:
        bench=table_report(f"{TABLES_DIR}/bench.csv", "bench"),
    log:
        f"{LOGS}/bench_table.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    script:
        "../workflow_scripts/bench_table.py"


# Every run's accuracy (and the deployed variants' ONNX accuracy), and the QAT runs' oscillation.
rule accuracy_tables:
    input:
        metrics=fp32_runs(f"{RUN}/fp32/metrics.json")
        + quantized_runs(f"{PTQ_RUN}/metrics.json", PTQ_SEEDS)
        + quantized_runs(f"{QAT_RUN}/metrics.json"),
        onnx=deployed_runs(f"{RUN}/{{variant}}/onnx.json"),
    output:
        accuracy=table_report(f"{TABLES_DIR}/accuracy.csv", "accuracy"),
        oscillation=table_report(f"{TABLES_DIR}/oscillation.csv", "oscillation"),
    log:
        f"{LOGS}/accuracy_tables.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    script:
        "../workflow_scripts/accuracy_tables.py"


# The summary (Markdown) and LaTeX tables, from the accuracy and benchmark tables: the deployment table and the
# summary's deployment section come from the benchmarks, the others from the accuracy.
rule summary_tables:
    input:
        accuracy=f"{TABLES_DIR}/accuracy.csv",
        bench=f"{TABLES_DIR}/bench.csv",
    output:
        summary=table_report(f"{TABLES_DIR}/summary.md", "summary"),
        latex=[table_report(f"{TABLES_DIR}/{name}.tex", "summary") for name in LATEX_TABLES],
    log:
        f"{LOGS}/summary_tables.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        summary_bits=config["figures"]["summary_bits"],
    script:
        "../workflow_scripts/summary_tables.py"


# Every claim as a row with its 95% interval, from the accuracy, oscillation and variation tables.
rule findings:
    input:
        accuracy=f"{TABLES_DIR}/accuracy.csv",
        oscillation=f"{TABLES_DIR}/oscillation.csv",
        variation=f"{TABLES_DIR}/variation.csv",
    output:
        csv=table_report(f"{TABLES_DIR}/findings.csv", "findings"),
        markdown=f"{TABLES_DIR}/findings.md",
    log:
        f"{LOGS}/findings.log",
    conda:
        "../envs/qatstudy.yaml"
    script:
        "../workflow_scripts/findings.py"


rule render_figures:
    input:
        accuracy=f"{TABLES_DIR}/accuracy.csv",
        bench=f"{TABLES_DIR}/bench.csv",
        oscillation=f"{TABLES_DIR}/oscillation.csv",
        captions=figure_captions(TABLE_FIGURES),
    output:
        figures=figure_outputs(TABLE_FIGURES),
    log:
        f"{LOGS}/figures.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        names=TABLE_FIGURES,
        bubble_batch=max(config["bench"]["batch_sizes"]),
    script:
        "../workflow_scripts/figures.py"


# Only a study that runs the sensitivity analysis asks for this figure (common.smk's FIGURE_NAMES).
rule render_sensitivity_figure:
    input:
        sensitivity=f"{TABLES_DIR}/sensitivity.csv",
        captions=figure_captions([SENSITIVITY_FIGURE]),
    output:
        figures=figure_outputs([SENSITIVITY_FIGURE]),
    log:
        f"{LOGS}/figures_sensitivity.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        names=[SENSITIVITY_FIGURE],
    script:
        "../workflow_scripts/figures.py"
