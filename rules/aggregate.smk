rule aggregate:
    input:
        metrics=run_files(RUN + "/fp32/metrics.json")
        + run_files(RUN + "/{variant}/metrics.json", [f"ptq_{t}" for t in BIT_TAGS] + DEPLOYED[1:]),
        onnx=run_files(RUN + "/{variant}/onnx.json", DEPLOYED),
        bench=run_files(RUN + "/{variant}/bench_cpu.json", DEPLOYED),
    output:
        accuracy="results/tables/accuracy.csv",
        bench="results/tables/bench.csv",
        summary="results/tables/summary.md",
        oscillation="results/tables/oscillation.csv",
    params:
        summary_bits=config["figures"]["summary_bits"],
    log:
        "logs/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"


rule render_figures:
    input:
        accuracy="results/tables/accuracy.csv",
        bench="results/tables/bench.csv",
    output:
        FIGURES,
    params:
        names=FIGURE_NAMES,
        bubble_batch=max(config["bench"]["batch_sizes"]),
    log:
        "logs/figures.log",
    script:
        "../workflow_scripts/figures.py"
