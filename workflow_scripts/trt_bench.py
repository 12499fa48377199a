from qatstudy.job_runner import job_provenance, run
from qatstudy.trt_jobs import benchmark_engines


def main(snakemake, log):
    benchmark_engines(
        engines=list(snakemake.input.engines),
        records=list(snakemake.input.records),
        metrics=snakemake.input.metrics,
        result=snakemake.output.result,
        profiles=list(snakemake.output.profiles),
        settings=snakemake.params.bench,
        trt_config=snakemake.config["trt"],
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main, uses_torch=False)
