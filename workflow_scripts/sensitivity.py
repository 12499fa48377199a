from qatstudy.analysis import analyse_sensitivity
from qatstudy.job_runner import job_provenance, run


def main(snakemake, log):
    s = snakemake.params.settings
    analyse_sensitivity(
        data=snakemake.input.data,
        fp32_checkpoint=snakemake.input.fp32,
        identity=snakemake.params.identity,
        seed=int(snakemake.wildcards.seed),
        bits=s["bits"],
        groups=s["groups"],
        quant_options=s["quant"],
        calibration=s["calibration"]["method"],
        calib_images=s["calibration"]["images"],
        val_images=s["val_images"],
        output=snakemake.output[0],
        provenance=job_provenance(snakemake),
        log=log,
    )


run(snakemake, main)
