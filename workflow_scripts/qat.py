from qatstudy.job_runner import job_provenance, run
from qatstudy.quant import QuantScheme
from qatstudy.stage_settings import BatchnormReestimation, QATSettings, TrainSettings
from qatstudy.stages import qat


def main(snakemake, log):
    p = snakemake.params
    qat(
        data=snakemake.input.data,
        fp32_checkpoint=snakemake.input.fp32,
        scheme=QuantScheme.from_tag(snakemake.wildcards.tag, **p.quant),
        identity=p.identity,
        settings=TrainSettings(**p.settings),
        calibration=p.calibration["method"],
        calib_images=p.calibration["images"],
        bn_reestimation=BatchnormReestimation.from_config(p.calibration),
        seed=int(snakemake.wildcards.qseed),
        fp32_seed=int(snakemake.wildcards.seed),
        objective=QATSettings(**p.objective),
        checkpoint=snakemake.output.checkpoint,
        metrics=snakemake.output.metrics,
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main)
