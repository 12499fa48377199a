from qatstudy.analysis import analyse_variation
from qatstudy.workflow import run


def main(snakemake, log):
    analyse_variation(data=snakemake.input.data, fp32_checkpoint=snakemake.input.fp32,
                      identity=snakemake.params.identity, seed=int(snakemake.wildcards.seed),
                      images=snakemake.params.images, output=snakemake.output[0], log=log)


run(snakemake, main)
