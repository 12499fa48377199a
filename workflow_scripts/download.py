from qatstudy.data import fetch_dataset
from qatstudy.job_runner import run


def main(snakemake, log):
    p = snakemake.params
    found = fetch_dataset(p.dataset, snakemake.output[0].rsplit("/", 1)[0], mirrors=p.mirrors, urls=p.urls)
    for name, path in found.items():
        log(f"verified {name}: {path}")


run(snakemake, main, uses_torch=False)
