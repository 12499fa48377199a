# Tables from the per-run JSON files, figures from those tables only, and what `snakemake --report` shows.

LATEX_TABLES = ["models", "top1_by_bits", "deployment"]  # results/tables/<name>.tex
SENSITIVITY_FIGURE = "sensitivity"  # drawn from the analysis stage's sensitivity.csv, by its own rule
TABLE_FIGURES = [name for name in FIGURE_NAMES if name != SENSITIVITY_FIGURE]


# the report's front page: what the study is, and its effective configuration
report: "../report/workflow.rst"


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
        svg = report(f"results/figures/{name}.svg", labels={"figure": name, "format": "SVG"}, **flags)
        html = report(f"results/figures/{name}.html", labels={"figure": name, "format": "interactive HTML"}, **flags)
        outputs += [f"results/figures/{name}.png", f"results/figures/{name}.caption.md", svg, html]
    return outputs


rule aggregate:
    input:
        metrics=run_files(RUN + "/fp32/metrics.json")
        + run_files(RUN + "/{variant}/metrics.json", [f"ptq_{t}" for t in BIT_TAGS] + DEPLOYED[1:]),
        onnx=run_files(RUN + "/{variant}/onnx.json", DEPLOYED),
        bench=run_files(RUN + "/{variant}/bench_cpu.json", DEPLOYED) + TRT_BENCH,
    output:
        accuracy=table_report("results/tables/accuracy.csv", "accuracy"),
        bench=table_report("results/tables/bench.csv", "bench"),
        summary=table_report("results/tables/summary.md", "summary"),
        oscillation=table_report("results/tables/oscillation.csv", "oscillation"),
        latex=[table_report(f"results/tables/{name}.tex", "summary") for name in LATEX_TABLES],
    params:
        summary_bits=config["figures"]["summary_bits"],
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    log:
        "logs/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"


rule render_figures:
    input:
        accuracy="results/tables/accuracy.csv",
        bench="results/tables/bench.csv",
        oscillation="results/tables/oscillation.csv",
        captions=figure_captions(TABLE_FIGURES),
    output:
        figures=figure_outputs(TABLE_FIGURES),
    params:
        names=TABLE_FIGURES,
        bubble_batch=max(config["bench"]["batch_sizes"]),
    log:
        "logs/figures.log",
    script:
        "../workflow_scripts/figures.py"


# Only a study that runs the sensitivity analysis asks for this figure (common.smk's FIGURE_NAMES).
rule render_sensitivity_figure:
    input:
        sensitivity="results/tables/sensitivity.csv",
        captions=figure_captions([SENSITIVITY_FIGURE]),
    output:
        figures=figure_outputs([SENSITIVITY_FIGURE]),
    params:
        names=[SENSITIVITY_FIGURE],
    log:
        "logs/figures_sensitivity.log",
    script:
        "../workflow_scripts/figures.py"
