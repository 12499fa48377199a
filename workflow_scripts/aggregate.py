from qatstudy.aggregate import (accuracy_table, bench_table, oscillation_table, summary_markdown, write_csv,
                                write_text)
from qatstudy.workflow import run


def main(snakemake, log):
    accuracy = accuracy_table(snakemake.input.metrics, snakemake.input.onnx)
    bench = bench_table(snakemake.input.bench)
    write_csv(accuracy, snakemake.output.accuracy)
    write_csv(bench, snakemake.output.bench)
    write_csv(oscillation_table(snakemake.input.metrics), snakemake.output.oscillation)
    write_text(summary_markdown(accuracy, bench, snakemake.params.summary_bits), snakemake.output.summary)
    log(f"{len(accuracy)} accuracy rows, {len(bench)} benchmark rows")


run(snakemake, main, uses_torch=False)
