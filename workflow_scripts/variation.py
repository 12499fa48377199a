from qatstudy.analysis import analyse_variation
from qatstudy.job_runner import job_provenance, run


def main(snakemake, log):
    analyse_variation(
        data=snakemake.input.data,
        fp32_checkpoint=snakemake.input.fp32,
        identity=snakemake.params.identity,
        seed=int(snakemake.wildcards.seed),
        images=snakemake.params.settings["images"],
        output=snakemake.output[0],
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main)
