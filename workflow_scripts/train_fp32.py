from qatstudy.job_runner import job_provenance, run
from qatstudy.stage_settings import TrainSettings
from qatstudy.stages import train_fp32


def main(snakemake, log):
    p = snakemake.params
    train_fp32(
        data=snakemake.input.data,
        arch=p.identity["arch"],
        kwargs=p.identity["kwargs"],
        identity=p.identity,
        settings=TrainSettings(**p.settings),
        seed=int(snakemake.wildcards.seed),
        pretrained=p.pretrained,
        zero_init_head=p.zero_init_head,
        checkpoint=snakemake.output.checkpoint,
        metrics=snakemake.output.metrics,
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main)
