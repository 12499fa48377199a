from pathlib import Path

from qatstudy.data import prepare_splits
from qatstudy.io import write_json
from qatstudy.job_runner import run


def main(snakemake, log):
    p = snakemake.params
    summary = prepare_splits(
        p.dataset,
        Path(snakemake.input[0]).parent,
        snakemake.output.splits,
        val_size=p.val_size,
        split_seed=p.split_seed,
        train_subset=p.train_subset,
        test_subset=p.test_subset,
    )
    write_json(snakemake.output.summary, summary)
    log(str(summary))


run(snakemake, main, uses_torch=False)
