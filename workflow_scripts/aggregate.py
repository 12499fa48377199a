from pathlib import Path

from qatstudy.aggregate import accuracy_table, bench_table, oscillation_table, summary_markdown, summary_tables
from qatstudy.io import write_csv, write_text
from qatstudy.provenance import check_one_config
from qatstudy.tables import latex_table
from qatstudy.workflow import run


def main(snakemake, log):
    check_one_config([*snakemake.input.metrics, *snakemake.input.onnx, *snakemake.input.bench],
                     allow_mixed=snakemake.params.allow_mixed_config, log=log)
    accuracy = accuracy_table(snakemake.input.metrics, snakemake.input.onnx)
    bench = bench_table(snakemake.input.bench)
    write_csv(accuracy, snakemake.output.accuracy)
    write_csv(bench, snakemake.output.bench)
    write_csv(oscillation_table(snakemake.input.metrics), snakemake.output.oscillation)
    summary_bits = snakemake.params.summary_bits
    write_text(summary_markdown(accuracy, bench, summary_bits), snakemake.output.summary)
    tables = summary_tables(accuracy, bench, summary_bits)
    for path in snakemake.output.latex:  # results/tables/<table name>.tex
        name = Path(path).stem
        write_text(latex_table(tables[name], label=name), path)
    log(f"{len(accuracy)} accuracy rows, {len(bench)} benchmark rows")


run(snakemake, main, uses_torch=False)
