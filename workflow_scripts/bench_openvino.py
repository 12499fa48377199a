from qatstudy.backends import (
    ONNXRUNTIME,
    OPENVINO,
    deployed_accuracy,
    openvino_model,
    openvino_predictor,
    precision_census,
    predictor,
)
from qatstudy.bench import benchmark_onnx
from qatstudy.io import read_json, write_json
from qatstudy.job_runner import job_provenance, run
from qatstudy.records import BENCH_RUN_FIELDS


def main(snakemake, log):
    p, onnx = snakemake.params.bench, snakemake.input.onnx
    metrics = read_json(snakemake.input.metrics)
    rows = benchmark_onnx(
        onnx,
        tuple(metrics["input_shape"]),
        p["batch_sizes"],
        threads=p["threads"],
        warmup=p["warmup"],
        iterations=p["iterations"],
        backend=OPENVINO,
    )
    # after the timings, so that neither the reference session nor the test split counts in peak memory; the
    # reference is onnxruntime on the same file, which the export checked against the PyTorch model
    compiled = openvino_model(onnx, p["threads"])  # one compile serves the accuracy run and the census
    accuracy = deployed_accuracy(
        openvino_predictor(compiled), predictor(ONNXRUNTIME, onnx, p["threads"]), snakemake.input.data
    )
    census = precision_census(compiled)
    write_json(
        snakemake.output[0],
        {
            **{k: metrics[k] for k in BENCH_RUN_FIELDS},
            "rows": [
                {**row, **accuracy, **{k: census[k] for k in ("integer_compute_layers", "compute_layers")}}
                for row in rows
            ],
            "precision_census": census["layers"],
            "provenance": job_provenance(snakemake),
        },
    )
    log(f"{accuracy}; compute layers in integers: {census['integer_compute_layers']} of {census['compute_layers']}")
    for row in rows:
        log(str(row))


run(snakemake, main, uses_torch=False)
