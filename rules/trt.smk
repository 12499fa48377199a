# TensorRT engines built and benchmarked with trtexec on a Jetson reached over ssh, or on this machine's GPU
# (trt.transport: ssh or local; `--profile profiles/jetson` sets ssh). With trt.transport null, nothing here runs.
#
# The host comes from the environment when a job runs (qatstudy.remote), never from params, so changing it reruns
# nothing. Jobs on the device take one `trt_device` resource: the profile's pool of one runs them one at a time.

from qatstudy.trt import BENCH_SETTINGS, BUILD_SETTINGS

TRT = config["trt"]
TRT_RUN = RUN + "/{variant}/trt"
TRT_BATCHES = config["bench"]["batch_sizes"]
# the TensorRT benchmark files the tables read (aggregate's bench input)
TRT_BENCH = run_files(RUN + "/{variant}/bench_trt.json", DEPLOYED) if TRT["transport"] else []
TRT_BUILD_SETTINGS = canonical({k: TRT[k] for k in BUILD_SETTINGS})
TRT_BENCH_SETTINGS = canonical({k: TRT[k] for k in BENCH_SETTINGS})


wildcard_constraints:
    batch=r"\d+",


def trt_threads():
    """A local GPU benchmark runs alone on the machine (trtexec drives the GPU from a CPU thread); over ssh
    the workstation only waits."""
    return alone(1) if TRT["transport"] == "local" else 1


def per_batch(pattern):
    return expand(pattern, batch=TRT_BATCHES, allow_missing=True)


rule trt_build:
    input:
        onnx=f"{RUN}/{{variant}}/model_trt.onnx",  # the explicit-quantization layout (rules/export.smk)
        metrics=f"{RUN}/{{variant}}/metrics.json",
    output:
        engine=f"{TRT_RUN}/b{{batch}}.engine",
        layers=f"{TRT_RUN}/b{{batch}}.layers.json",
        record=f"{TRT_RUN}/b{{batch}}.build.json",
    params:
        build=TRT_BUILD_SETTINGS,
        config_digest=variant_digest(trt_build=TRT_BUILD_SETTINGS),
    resources:
        trt_device=1,
    threads: trt_threads()
    log:
        "logs/trt_build/{model}_seed{seed}_{variant}_b{batch}.log",
    script:
        "../workflow_scripts/trt_build.py"


rule trt_bench:
    input:
        engines=per_batch(f"{TRT_RUN}/b{{batch}}.engine"),
        records=per_batch(f"{TRT_RUN}/b{{batch}}.build.json"),
        metrics=f"{RUN}/{{variant}}/metrics.json",
    output:
        result=f"{RUN}/{{variant}}/bench_trt.json",
        profiles=per_batch(f"{TRT_RUN}/b{{batch}}.profile.json"),
    params:
        bench=TRT_BENCH_SETTINGS,
        config_digest=variant_digest(trt_build=TRT_BUILD_SETTINGS, trt_bench=TRT_BENCH_SETTINGS),
    resources:
        trt_device=1,
    threads: trt_threads()
    log:
        "logs/trt_bench/{model}_seed{seed}_{variant}.log",
    script:
        "../workflow_scripts/trt_bench.py"
