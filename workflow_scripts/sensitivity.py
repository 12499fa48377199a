from qatstudy.analysis import analyse_sensitivity
from qatstudy.workflow import run


def main(snakemake, log):
    p = snakemake.params
    analyse_sensitivity(data=snakemake.input.data, fp32_checkpoint=snakemake.input.fp32, identity=p.identity,
                        seed=int(snakemake.wildcards.seed), bits=p.bits, groups=p.groups, quant_options=p.quant,
                        calibration=p.calibration["method"], calib_images=p.calibration["images"],
                        test_images=p.test_images, output=snakemake.output[0], log=log)


run(snakemake, main)
