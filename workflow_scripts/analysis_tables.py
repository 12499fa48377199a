from qatstudy.aggregate import write_csv
from qatstudy.analysis import sensitivity_table, variation_summary, variation_table
from qatstudy.workflow import run


def main(snakemake, log):
    sensitivity = sensitivity_table(snakemake.input.sensitivity)
    variation = variation_table(snakemake.input.variation)
    write_csv(sensitivity, snakemake.output.sensitivity)
    write_csv(variation, snakemake.output.variation)
    write_csv(variation_summary(variation), snakemake.output.variation_summary)
    log(f"{len(sensitivity)} sensitivity rows, {len(variation)} variation rows")


run(snakemake, main, uses_torch=False)
