from qatstudy.bench import benchmark_onnx
from qatstudy.io import read_json, write_json
from qatstudy.job_runner import job_provenance, run
from qatstudy.records import BENCH_RUN_FIELDS


def main(snakemake, log):
    p = snakemake.params.bench
    metrics = read_json(snakemake.input.metrics)
    rows = benchmark_onnx(
        snakemake.input.onnx,
        tuple(metrics["input_shape"]),
        p["batch_sizes"],
        threads=p["threads"],
        warmup=p["warmup"],
        iterations=p["iterations"],
    )
    write_json(
        snakemake.output[0],
        {**{k: metrics[k] for k in BENCH_RUN_FIELDS}, "rows": rows, "provenance": job_provenance(snakemake)},
    )
    for row in rows:
        log(str(row))


run(snakemake, main, uses_torch=False)
