from qatstudy.job_runner import job_provenance, run
from qatstudy.trt_jobs import build_engine


def main(snakemake, log):
    build_engine(
        onnx=snakemake.input.onnx,
        metrics=snakemake.input.metrics,
        engine=snakemake.output.engine,
        record=snakemake.output.record,
        layers=snakemake.output.layers,
        batch=int(snakemake.wildcards.batch),
        settings=snakemake.params.build,
        trt_config=snakemake.config["trt"],
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main, uses_torch=False)
