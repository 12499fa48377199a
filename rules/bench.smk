rule bench_cpu:
    input:
        onnx=f"{RUN}/{{variant}}/model.onnx",
        metrics=f"{RUN}/{{variant}}/metrics.json",
    output:
        f"{RUN}/{{variant}}/bench_cpu.json",
    log:
        f"{LOGS}/bench_cpu/{{model}}_seed{{seed}}_{{variant}}.log",
    conda:
        "../envs/qatstudy.yaml"
    threads: alone(config["bench"]["threads"])  # timings without neighbours
    params:
        bench=canonical(config["bench"]),
        config_digest=variant_digest(bench=config["bench"]),
    script:
        "../workflow_scripts/bench_cpu.py"
