# TensorRT engines built and benchmarked with trtexec on a Jetson reached over ssh, or on this machine's GPU
# (trt.transport: ssh or local; `--profile jetson` sets ssh). With trt.transport null, nothing here runs.
#
# The host comes from the environment when a job runs (qatstudy.remote), never from params, so changing it reruns
# nothing. Jobs on the device take one `trt_device` resource: the profile's pool of one runs them one at a time.
#
# {precision} is the precision of the layers outside Q/DQ pairs: the FP32 model is built once per
# trt.float_baselines (its FP32 and FP16 baselines), a quantized model once, in trt.float_precision
# (common.smk's float_precisions; TRT_BENCH there lists the benchmark files the bench table reads).

from qatstudy.config import check_trt
from qatstudy.trt import BENCH_SETTINGS, BUILD_SETTINGS

check_trt(TRT)
TRT_RUN = f"{RUN}/{{variant}}/trt/{{precision}}"
TRT_BUILD_SETTINGS = canonical({k: TRT[k] for k in BUILD_SETTINGS})
TRT_BENCH_SETTINGS = canonical({k: TRT[k] for k in BENCH_SETTINGS})
# A local GPU benchmark runs alone on the machine (trtexec drives the GPU from a CPU thread); over ssh the
# workstation only waits.
TRT_THREADS = alone(1) if TRT["transport"] == "local" else 1


wildcard_constraints:
    batch=r"\d+",
    precision="fp16|fp32",


rule trt_build:
    input:
        onnx=f"{RUN}/{{variant}}/model_trt.onnx",  # the explicit-quantization layout (rules/export.smk)
        metrics=f"{RUN}/{{variant}}/metrics.json",
    output:
        engine=f"{TRT_RUN}/b{{batch}}.engine",
        layers=f"{TRT_RUN}/b{{batch}}.layers.json",
        record=f"{TRT_RUN}/b{{batch}}.build.json",
    log:
        f"{LOGS}/trt_build/{{model}}_seed{{seed}}_{{variant}}_{{precision}}_b{{batch}}.log",
    conda:
        "../envs/qatstudy.yaml"
    threads: TRT_THREADS
    resources:
        trt_device=1,
    params:
        build=lambda w: canonical({**TRT_BUILD_SETTINGS, "float_precision": w.precision}),
        config_digest=variant_digest(trt_build=TRT_BUILD_SETTINGS),
    script:
        "../workflow_scripts/trt_build.py"


rule trt_bench:
    input:
        engines=per_batch(f"{TRT_RUN}/b{{batch}}.engine"),
        records=per_batch(f"{TRT_RUN}/b{{batch}}.build.json"),
        metrics=f"{RUN}/{{variant}}/metrics.json",
    output:
        result=f"{RUN}/{{variant}}/bench_trt_{{precision}}.json",
        profiles=per_batch(f"{TRT_RUN}/b{{batch}}.profile.json"),
    log:
        f"{LOGS}/trt_bench/{{model}}_seed{{seed}}_{{variant}}_{{precision}}.log",
    conda:
        "../envs/qatstudy.yaml"
    threads: TRT_THREADS
    resources:
        trt_device=1,
    params:
        bench=TRT_BENCH_SETTINGS,
        config_digest=variant_digest(trt_build=TRT_BUILD_SETTINGS, trt_bench=TRT_BENCH_SETTINGS),
    script:
        "../workflow_scripts/trt_bench.py"
