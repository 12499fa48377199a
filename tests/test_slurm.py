"""`snakemake --profile slurm` (from the repository root) against a real single-node SLURM cluster.

The test starts munged, slurmctld and slurmd (Debian's munge and slurm-wlm) on localhost with everything in tmp:
its own munge key and socket, slurm.conf, state and spool folders, logs and ports. One partition holds one node
with this machine's CPUs and one GPU on /dev/null: the profile asks the GPU rules for --gpus=1, and nothing uses the
GPU (the training code runs on the CPU). No cgroups (proctrack/linuxproc, task/none) and no accounting database, so
jobs are followed with squeue instead of sacct. The tiny study runs through the profile as written, up to one FP32
model; the command line adds only what this cluster needs (squeue, a first status check after 1 s, kept job logs).
Skipped where slurmctld, slurmd or munged are missing (.ci/run installs slurm-wlm and munge) or without root (slurmd
starts each job as its user).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port, needs_fashion_mnist
from qatstudy.io import read_json

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
TARGET = "runs/tiny/vit/seed0/fp32/metrics.json"  # the tiny ViT trains faster than its CNN
RULES = {"download", "split", "train_fp32"}  # the jobs TARGET needs: two on CPUs, one with a GPU
GPU_RULES = {"train_fp32"}
MEMORY_MB = 64_000  # declared node memory: fits the profile's requests, up to 16 GB x 3 attempts (not enforced)

pytestmark = [
    pytest.mark.skipif(
        not all(Path(d).exists() for d in DAEMONS) or not shutil.which("sbatch"),
        reason="no SLURM here (slurmctld, slurmd, munged, sbatch): apt-get install slurm-wlm munge",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd must run as root to start jobs"),
    needs_fashion_mnist,
]


def node_line() -> str:
    """This machine as slurmd sees it (CPUs, sockets, cores, threads), named localhost, with MEMORY_MB."""
    line = subprocess.run(["/usr/sbin/slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in line.split())
    fields.update(
        NodeName="localhost", NodeHostname="localhost", RealMemory=str(MEMORY_MB), Gres="gpu:1", State="UNKNOWN"
    )
    return " ".join(f"{k}={v}" for k, v in fields.items())


def slurm_conf(root: Path, munge_socket: Path) -> str:
    return f"""\
ClusterName=qatstudy-test
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
SlurmctldDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# the node's declared memory counts, not what this machine has
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay visible to squeue for an hour: the executor and the test follow them with squeue
MinJobAge=3600
GresTypes=gpu
{node_line()}
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def wait_for(check, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            tails = "\n".join(f"--- {p}:\n{p.read_text()[-2000:] if p.exists() else '(none)'}" for p in logs)
            pytest.fail(f"{what} did not happen within {timeout} s\n{tails}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """A running single-node SLURM cluster, and the environment that points SLURM's commands at it."""
    root = tmp_path_factory.mktemp("slurm")
    munge = root / "munge"
    for folder in (munge, root / "state", root / "spool"):
        folder.mkdir()
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = munge / "munge.socket"
    (root / "slurm.conf").write_text(slurm_conf(root, munge_socket))
    (root / "gres.conf").write_text("AutoDetect=off\nNodeName=localhost Name=gpu File=/dev/null Count=1\n")
    # The executor's job step calls srun with every SLURM_* variable but a few dropped, SLURM_CONF among them, and
    # this cluster's slurm.conf is not where srun looks without it (/etc/slurm): an srun on PATH first puts it back.
    shims = root / "bin"
    shims.mkdir()
    (shims / "srun").write_text(f'#!/bin/sh\nSLURM_CONF="{root / "slurm.conf"}" exec {shutil.which("srun")} "$@"\n')
    (shims / "srun").chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": f"{shims}:{os.environ['PATH']}"}
    logs = [munge / "munged.log", root / "slurmctld.log", root / "slurmd.log", root / "daemons.out"]
    out = open(root / "daemons.out", "w")
    daemons = [
        subprocess.Popen(
            [
                "/usr/sbin/munged",
                "--foreground",
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            stdout=out,
            stderr=out,
        )
    ]
    try:
        wait_for(munge_socket.exists, "munged's socket", logs)
        daemons.append(
            subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-f", env["SLURM_CONF"]], env=env, stdout=out, stderr=out)
        )
        daemons.append(
            subprocess.Popen(
                ["/usr/sbin/slurmd", "-D", "-N", "localhost", "-f", env["SLURM_CONF"]], env=env, stdout=out, stderr=out
            )
        )

        def node_idle() -> bool:
            state = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format=%T"], env=env, capture_output=True, text=True
            )
            return state.stdout.strip() == "idle"

        wait_for(node_idle, "the node's turning idle in sinfo", logs)
        yield {"env": env, "root": root}
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        out.close()


def snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """The profile by its name, as the README gives it: found in the repository root, the working directory."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--profile",
            "slurm",
            "--configfile",
            str(TINY),
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--slurm-keep-successful-logs",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def jobs(env: dict) -> list[dict]:
    """Every job this cluster has seen lately (finished ones for MinJobAge), as squeue reports them."""
    fields = ["JobID", "Comment", "State", "tres-per-job", "MinMemory", "TimeLimit", "NumCPUs"]
    listing = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--Format", ",".join(f"{f}:|" for f in fields)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [dict(zip(fields, (v.strip() for v in line.split("|")))) for line in listing.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm_study")
    result = snakemake(workdir, cluster["env"], TARGET)
    assert result.returncode == 0, (
        f"snakemake --profile slurm failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return workdir


def test_jobs_go_through_sbatch_with_the_profiles_resources(study, cluster):
    submitted = {job["Comment"].split("_wildcards_")[0].removeprefix("rule_"): job for job in jobs(cluster["env"])}
    assert set(submitted) == RULES, submitted
    for rule, job in submitted.items():
        assert job["State"] == "COMPLETED", job
        assert job["NumCPUs"] == "1"  # tiny.yaml's threads: one CPU per job (--cpus-per-task)
        assert ("gpu:1" in job["tres-per-job"]) == (rule in GPU_RULES), job  # --gpus=1
    # memory and time as the slurm profile sets them for the first attempt
    assert (submitted["train_fp32"]["MinMemory"], submitted["train_fp32"]["TimeLimit"]) == ("16000M", "8:00:00")
    assert (submitted["download"]["MinMemory"], submitted["download"]["TimeLimit"]) == ("2000M", "30:00")
    log = (cluster["root"] / "slurmctld.log").read_text()
    assert log.count("_slurm_rpc_submit_batch_job") == len(RULES)  # each one an sbatch
    # the executor's job logs (kept: --slurm-keep-successful-logs), one per job
    slurm_logs = study / ".snakemake/slurm_logs"
    assert {p.relative_to(slurm_logs).parts[0] for p in slurm_logs.rglob("*.log")} == {f"rule_{r}" for r in RULES}
    # the result records the SLURM job that made it
    record = read_json(study / TARGET)["provenance"]
    assert record["slurm_job_id"] == submitted["train_fp32"]["JobID"]
    assert (record["config_scope"], record["seed"]) == ("fp32", 0)


def test_second_run_through_the_profile_has_nothing_to_do(study, cluster):
    result = snakemake(study, cluster["env"], TARGET, "--dry-run")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
