from qatstudy.analysis import sensitivity_table, variation_summary, variation_table
from qatstudy.io import write_csv
from qatstudy.job_runner import run
from qatstudy.provenance import check_one_config


def main(snakemake, log):
    check_one_config(
        [*snakemake.input.sensitivity, *snakemake.input.variation],
        allow_mixed=snakemake.params.allow_mixed_config,
        log=log,
    )
    sensitivity = sensitivity_table(snakemake.input.sensitivity)
    variation = variation_table(snakemake.input.variation)
    write_csv(sensitivity, snakemake.output.sensitivity)
    write_csv(variation, snakemake.output.variation)
    write_csv(variation_summary(variation), snakemake.output.variation_summary)
    log(f"{len(sensitivity)} sensitivity rows, {len(variation)} variation rows")


run(snakemake, main, uses_torch=False)
