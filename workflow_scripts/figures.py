from pathlib import Path

import pandas as pd

from qatstudy.charts import caption_markdown, figure, save_chart
from qatstudy.io import write_text
from qatstudy.job_runner import run


def main(snakemake, log):
    tables = {name: pd.read_csv(path) for name, path in snakemake.input.items() if name != "captions"}
    bubble_batch = snakemake.params.get("bubble_batch")
    for name, caption in zip(snakemake.params.names, snakemake.input.captions):
        stem = Path(snakemake.output.figures[0]).parent / name
        for path in save_chart(figure(name, tables, bubble_batch), stem):
            log(f"wrote {path}")
        write_text(caption_markdown(Path(caption).read_text()), f"{stem}.caption.md")


run(snakemake, main, uses_torch=False)
