import pandas as pd

from qatstudy.findings import findings_markdown, findings_table
from qatstudy.io import write_csv, write_text
from qatstudy.job_runner import run


def main(snakemake, log):
    tables = {name: pd.read_csv(path) for name, path in snakemake.input.items()}
    findings = findings_table(tables["accuracy"], tables["oscillation"], tables["variation"])
    write_csv(findings, snakemake.output.csv)
    write_text(findings_markdown(findings), snakemake.output.markdown)
    log(f"{len(findings)} findings, {int(findings.shown.sum())} with an interval that excludes zero")


run(snakemake, main, uses_torch=False)
