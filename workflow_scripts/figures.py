from pathlib import Path

import pandas as pd

from qatstudy.charts import accuracy_by_bits, accuracy_vs_latency, save_chart
from qatstudy.workflow import run


def main(snakemake, log):
    accuracy = pd.read_csv(snakemake.input.accuracy)
    bench = pd.read_csv(snakemake.input.bench)
    charts = {"accuracy_by_bits": accuracy_by_bits(accuracy),
              "accuracy_vs_latency": accuracy_vs_latency(accuracy, bench, snakemake.params.bubble_batch)}
    out_dir = Path(snakemake.output[0]).parent
    for name in snakemake.params.names:
        for path in save_chart(charts[name], out_dir / name):
            log(f"wrote {path}")


run(snakemake, main, uses_torch=False)
