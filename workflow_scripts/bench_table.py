from qatstudy.aggregate import bench_table
from qatstudy.io import write_csv
from qatstudy.job_runner import run
from qatstudy.provenance import check_one_config


def main(snakemake, log):
    check_one_config(snakemake.input.bench, allow_mixed=snakemake.params.allow_mixed_config, log=log)
    bench = bench_table(snakemake.input.bench)
    write_csv(bench, snakemake.output.bench)
    log(f"{len(bench)} benchmark rows")


run(snakemake, main, uses_torch=False)
