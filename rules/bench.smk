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


# OpenVINO on CPU runs the explicit-quantization file TensorRT gets: the locally measurable stand-in for TensorRT's
# integer kernels (both fuse its Q/DQ pairs).
rule bench_openvino:
    input:
        onnx=f"{RUN}/{{variant}}/model_trt.onnx",
        metrics=f"{RUN}/{{variant}}/metrics.json",
        data=SPLITS,
    output:
        f"{RUN}/{{variant}}/bench_openvino.json",
    log:
        f"{LOGS}/bench_openvino/{{model}}_seed{{seed}}_{{variant}}.log",
    conda:
        "../envs/qatstudy.yaml"
    threads: alone(config["bench"]["threads"])  # timings without neighbours
    params:
        bench=canonical(config["bench"]),
        config_digest=variant_digest(bench=config["bench"]),
    script:
        "../workflow_scripts/bench_openvino.py"
