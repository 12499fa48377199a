from pathlib import Path

import pandas as pd

from qatstudy.aggregate import summary_markdown, summary_tables
from qatstudy.io import write_text
from qatstudy.job_runner import run
from qatstudy.tables import latex_table


def main(snakemake, log):
    accuracy, bench = pd.read_csv(snakemake.input.accuracy), pd.read_csv(snakemake.input.bench)
    summary_bits = snakemake.params.summary_bits
    write_text(summary_markdown(accuracy, bench, summary_bits), snakemake.output.summary)
    tables = summary_tables(accuracy, bench, summary_bits)
    for path in snakemake.output.latex:  # results/<study>/tables/<table name>.tex
        name = Path(path).stem
        write_text(latex_table(tables[name], label=name), path)
    log(f"summary of {len(accuracy)} accuracy rows and {len(bench)} benchmark rows")


run(snakemake, main, uses_torch=False)
