from qatstudy.aggregate import accuracy_table, oscillation_table
from qatstudy.io import write_csv
from qatstudy.job_runner import run
from qatstudy.provenance import check_one_config


def main(snakemake, log):
    check_one_config(
        [*snakemake.input.metrics, *snakemake.input.onnx], allow_mixed=snakemake.params.allow_mixed_config, log=log
    )
    accuracy = accuracy_table(snakemake.input.metrics, snakemake.input.onnx)
    oscillation = oscillation_table(snakemake.input.metrics)
    write_csv(accuracy, snakemake.output.accuracy)
    write_csv(oscillation, snakemake.output.oscillation)
    log(f"{len(accuracy)} accuracy rows, {len(oscillation)} oscillation rows")


run(snakemake, main, uses_torch=False)
