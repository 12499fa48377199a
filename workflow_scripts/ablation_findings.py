import pandas as pd

from qatstudy.findings import ABLATION_NOTE, ablation_findings, findings_markdown
from qatstudy.io import write_csv, write_text
from qatstudy.job_runner import run


def main(snakemake, log):
    (main_arm,) = snakemake.params.main_arm  # the workflow refuses to load without one
    findings = ablation_findings(pd.read_csv(snakemake.input[0]), main_arm)
    write_csv(findings, snakemake.output.csv)
    write_text(findings_markdown(findings, ABLATION_NOTE), snakemake.output.markdown)
    log(f"{len(findings)} ablation findings, {int(findings.shown.sum())} with an interval that excludes zero")


run(snakemake, main, uses_torch=False)
