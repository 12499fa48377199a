from qatstudy.ablation import ablation_frame, ablation_latex, ablation_markdown
from qatstudy.io import write_csv, write_text
from qatstudy.job_runner import run
from qatstudy.provenance import check_one_config


def main(snakemake, log):
    arms, models = snakemake.params.arms, snakemake.params.models
    check_one_config(
        [*snakemake.input.arms, *snakemake.input.fp32], allow_mixed=snakemake.params.allow_mixed_config, log=log
    )
    frame = ablation_frame(snakemake.input.arms, snakemake.input.fp32, arms, snakemake.params.arm_of)
    write_csv(frame, snakemake.output.csv)
    write_text(ablation_markdown(frame, arms, models), snakemake.output.md)
    write_text(ablation_latex(frame, arms, models), snakemake.output.tex)
    log(f"{len(frame)} ablation rows: {len(arms)} arms x {len(models)} models")


run(snakemake, main, uses_torch=False)
