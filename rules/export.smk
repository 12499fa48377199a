# Two layouts of the same Q/DQ export (qatstudy.qdq): model.onnx for onnxruntime on CPU (benchmarked by bench_cpu)
# and model_trt.onnx, explicit INT8 quantization (INT4 MatMul/Gemm weights where TensorRT takes them) for TensorRT
# (built by trt_build). FP32 variants write the float graph twice.
rule export_onnx:
    input:
        data=SPLITS,
        checkpoint=f"{RUN}/{{variant}}/model.pt",
    output:
        onnx=f"{RUN}/{{variant}}/model.onnx",
        trt_onnx=f"{RUN}/{{variant}}/model_trt.onnx",
        report=f"{RUN}/{{variant}}/onnx.json",
    log:
        f"{LOGS}/export/{{model}}_seed{{seed}}_{{variant}}.log",
    conda:
        "../envs/qatstudy.yaml"
    threads: cpu_share(config["threads"]["eval"])
    params:
        calibration=canonical(config["calibration"]),
        config_digest=variant_digest(),  # the qat scope already holds the calibration section
    script:
        "../workflow_scripts/export.py"
