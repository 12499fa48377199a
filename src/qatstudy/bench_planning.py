"""Workflow overhead at scale: how long Snakemake takes to plan a full grid, and whether a run with every output in
place does nothing and touches nothing.

In a scratch folder, with a full-grid config (the default study's settings and ablation arms; by default its four
models plus copies to make six, six bit-widths and three seeds) it

  1. times `snakemake -n all` (wall time of the whole command, as a user runs it; the best and the median of
     --repeats runs), and counts the jobs planned;
  2. creates every output of `all` and `ablation` without computing anything: empty files, whose times
     `snakemake --touch` then puts in the DAG's order;
  3. runs `snakemake --cores 1 all ablation` for real, times it, checks that it has nothing to be done, and that no
     file changed (path, size, modification time), Snakemake's own run log under .snakemake/log aside.

    uv run qatstudy bench-planning
    uv run qatstudy bench-planning --models 8 --bits 8 6 5 4 3 2 --seeds 0 1 2 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .config import REPO

NOTHING_TO_DO = "Nothing to be done"
RUN_LOGS = Path(".snakemake") / "log"  # each snakemake command writes its own log here


def grid_config(base: dict, models: int, bits: list, seeds: list[int]) -> dict:
    """`base` (a study config) with `models` models (its own, then numbered copies of them), `bits` and `seeds`."""
    config = copy.deepcopy(base)
    originals = list(base["models"].items())
    config["models"] = {}
    for i in range(models):
        name, spec = originals[i % len(originals)]
        config["models"][name if i < len(originals) else f"{name}-{i // len(originals) + 1}"] = spec
    config["bits"], config["seeds"] = bits, {**base["seeds"], "fp32": seeds, "qat_by_bits": {}}
    return config


def snakemake(workdir: Path, configfile: Path, *args: str) -> tuple[float, str]:
    """Run snakemake in `workdir` with `configfile`; its wall time in seconds and its output."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--replace-workflow-config",
        *args,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed (exit {result.returncode}):\n{output[-3000:]}")
    return seconds, output


def planned_jobs(dry_run_output: str) -> int:
    """The total of a dry run's job table (0 when there is nothing to do)."""
    match = re.search(r"^total\s+(\d+)\s*$", dry_run_output, re.MULTILINE)
    return int(match.group(1)) if match else 0


def planned_outputs(dry_run_output: str) -> list[str]:
    """Every output file of the jobs a dry run lists."""
    outputs = []
    for line in dry_run_output.splitlines():
        if line.strip().startswith("output:"):
            outputs += [path.strip() for path in line.split(":", 1)[1].split(",")]
    return outputs


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` but Snakemake's run logs: its size and modification time (ns)."""
    files = {}
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and RUN_LOGS not in relative.parents:
            stat = path.stat()
            files[str(relative)] = (stat.st_size, stat.st_mtime_ns)
    return files


def bench(workdir: Path, config: dict, repeats: int = 3, log=print) -> dict:
    configfile = workdir / "grid.yaml"
    configfile.write_text(yaml.safe_dump(config))
    times = []
    for _ in range(repeats):
        seconds, output = snakemake(workdir, configfile, "--dry-run", "all")
        times.append(seconds)
        log(f"snakemake -n all: {seconds:.2f} s")
    jobs = planned_jobs(output)
    _, full_plan = snakemake(workdir, configfile, "--dry-run", "all", "ablation")
    for path in planned_outputs(full_plan):
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).touch()
    snakemake(workdir, configfile, "--touch", "--cores", "1", "all", "ablation")  # times in the DAG's order
    before = snapshot(workdir)
    noop_s, output = snakemake(workdir, configfile, "--cores", "1", "all", "ablation")
    after = snapshot(workdir)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    return {
        "models": len(config["models"]),
        "bits": len(config["bits"]),
        "seeds": len(config["seeds"]["fp32"]),
        "arms": len(config["ablation"]["arms"]),
        "jobs_all": jobs,
        "jobs_all_ablation": planned_jobs(full_plan),
        "dry_run_s_best": min(times),
        "dry_run_s_median": statistics.median(times),
        "noop_run_s": noop_s,
        "noop_nothing_to_do": NOTHING_TO_DO in output,
        "files": len(after),
        "files_changed": changed,
    }


def report(result: dict) -> str:
    changed = result["files_changed"]
    return "\n".join(
        [
            f"grid: {result['models']} models x {result['bits']} bit-widths x {result['seeds']} seeds, "
            f"{result['arms']} ablation arms",
            f"snakemake -n all: {result['jobs_all']} jobs planned in {result['dry_run_s_best']:.2f} s "
            f"(best; median {result['dry_run_s_median']:.2f} s)",
            f"no-op run of all + ablation ({result['jobs_all_ablation']} jobs' outputs in place): "
            f"{result['noop_run_s']:.2f} s, "
            + ("nothing to be done" if result["noop_nothing_to_do"] else "JOBS WERE SCHEDULED"),
            f"files changed by the no-op run: {len(changed)} of {result['files']}"
            + (f" ({', '.join(changed[:10])})" if changed else ""),
        ]
    )


def main(args: argparse.Namespace) -> int:
    """`qatstudy bench-planning`: measure and print; 0 when the no-op run did nothing (options in qatstudy.cli)."""
    config = grid_config(yaml.safe_load(Path(args.config).read_text()), args.models, args.bits, args.seeds)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        result = bench(Path(args.keep), config, args.repeats)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-planning-") as folder:
            result = bench(Path(folder), config, args.repeats)
    print(report(result))
    return 0 if result["noop_nothing_to_do"] and not result["files_changed"] else 1
