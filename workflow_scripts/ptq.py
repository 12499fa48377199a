from qatstudy.quant import QuantScheme
from qatstudy.stages import ptq
from qatstudy.workflow import job_provenance, run


def main(snakemake, log):
    p = snakemake.params
    ptq(data=snakemake.input.data, fp32_checkpoint=snakemake.input.fp32,
        scheme=QuantScheme.from_tag(snakemake.wildcards.tag, **p.quant), identity=p.identity,
        calibration=p.calibration["method"], calib_images=p.calibration["images"],
        batchnorm_images=p.calibration["batchnorm_images"], seed=int(snakemake.wildcards.seed),
        metrics=snakemake.output.metrics, provenance=job_provenance(snakemake), log=log)


run(snakemake, main)
