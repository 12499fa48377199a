from qatstudy.job_runner import job_provenance, run
from qatstudy.quant import QuantScheme
from qatstudy.stage_settings import BatchnormReestimation
from qatstudy.stages import ptq


def main(snakemake, log):
    p = snakemake.params
    ptq(
        data=snakemake.input.data,
        fp32_checkpoint=snakemake.input.fp32,
        scheme=QuantScheme.from_tag(snakemake.wildcards.tag, **p.quant),
        identity=p.identity,
        calibration=p.calibration["method"],
        calib_images=p.calibration["images"],
        bn_reestimation=BatchnormReestimation.from_config(p.calibration),
        seed=int(snakemake.wildcards.qseed),
        fp32_seed=int(snakemake.wildcards.seed),
        metrics=snakemake.output.metrics,
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main)
