"""`snakemake --profile jetson bench` (from the repository root) against a real ssh server.

An sshd on 127.0.0.1 (throwaway host and user keys, everything in tmp) plays the Jetson; on its PATH are the
stand-ins in tests/stand_ins (trtexec runs onnxruntime and prints trtexec's formats; tegrastats and nvpmodel
print Jetson AGX Orin's). So the ONNX files really go over ssh, trtexec "runs" on the other side, and its output
comes back and is parsed, as on a Jetson. Skipped only where no sshd can be found (the CI installs
openssh-server; see .ci/run).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import free_port, needs_fashion_mnist
from qatstudy.io import read_json

REPO = Path(__file__).resolve().parents[1]
STAND_INS = REPO / "tests" / "stand_ins"
SSHD = Path("/usr/sbin/sshd")
HOST = "jetson-test"  # the ssh alias the workflow is pointed at
DOWN_HOST = "jetson-down"  # an alias whose port nobody listens on

pytestmark = [
    pytest.mark.skipif(
        not SSHD.exists() or not shutil.which("ssh") or not shutil.which("ssh-keygen"),
        reason="no OpenSSH server (/usr/sbin/sshd) here: apt-get install openssh-server",
    ),
    needs_fashion_mnist,
]


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> dict:
    """A running sshd and the environment that points the workflow at it."""
    root = tmp_path_factory.mktemp("device")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    remote_tmp = root / "remote-tmp"  # the device's TMPDIR, where each job's scratch folder lives
    remote_tmp.mkdir()
    # the device's tools: the stand-ins, trtexec run by this interpreter (the login shell's python3 may lack
    # onnxruntime: a ~/.bashrc can put another first on PATH)
    tools = root / "device-bin"
    tools.mkdir()
    (tools / "trtexec").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_INS / "trtexec"}" "$@"\n')
    (tools / "trtexec").chmod(0o755)
    for name in ("tegrastats", "nvpmodel"):
        (tools / name).symlink_to(STAND_INS / name)
    port, down_port = free_port(), free_port()
    (root / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {root / "host_key"}
PidFile {root / "sshd.pid"}
AuthorizedKeysFile {root / "authorized_keys"}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
SetEnv PATH={tools}:/usr/local/bin:/usr/bin:/bin TMPDIR={remote_tmp}
LogLevel ERROR
""")
    (root / "ssh_config").write_text(f"""\
Host {HOST} {DOWN_HOST}
  HostName 127.0.0.1
  User {getpass.getuser()}
  IdentityFile {root / "user_key"}
  IdentitiesOnly yes
  UserKnownHostsFile {root / "known_hosts"}
  StrictHostKeyChecking no
  LogLevel ERROR
Host {HOST}
  Port {port}
Host {DOWN_HOST}
  Port {down_port}
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder, as root
    log = open(root / "sshd.log", "w")
    sshd = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)
    env = {
        **os.environ,
        "QATSTUDY_SSH_CONFIG": str(root / "ssh_config"),
        "QATSTUDY_JETSON_HOST": HOST,
        "QATSTUDY_SSH_ATTEMPTS": "2",
    }
    try:
        deadline = time.time() + 20
        while (
            subprocess.run(
                ["ssh", "-F", str(root / "ssh_config"), "-o", "BatchMode=yes", HOST, "true"], capture_output=True
            ).returncode
            != 0
        ):
            if sshd.poll() is not None or time.time() > deadline:
                pytest.fail(f"the test sshd did not start: {(root / 'sshd.log').read_text()}")
            time.sleep(0.2)
        yield {"env": env, "remote_tmp": remote_tmp}
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
        log.close()


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
            "jetson",
            "--configfile",
            str(workdir / "study.yaml"),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def study(device, tmp_path_factory) -> Path:
    """The tiny study cut to one CNN at one bit-width, benchmarked through the jetson profile."""
    workdir = tmp_path_factory.mktemp("jetson_study")
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["models"] = {"cnn": config["models"]["cnn"]}
    config["bits"] = [8]
    config["bench"]["batch_sizes"] = [1, 4]
    config["trt"] = {
        "expected_version": "10.3",
        "warmup_ms": 50,
        "duration_s": 1,
        "iterations": 5,
        "power_interval_ms": 100,
    }
    (workdir / "study.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, device["env"], "bench")
    assert result.returncode == 0, f"snakemake bench failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return workdir


def test_engines_are_built_and_benchmarked_over_ssh(study, device):
    bench = pd.read_csv(study / "results/study/tables/bench.csv")
    trt_rows = bench[bench.backend == "tensorrt"]
    # engines x batch sizes: the FP32 model in FP32 and FP16 (trt.float_baselines), the QAT model in INT8+FP16
    assert len(trt_rows) == 3 * 2 and sorted(zip(trt_rows.method, trt_rows.precision)) == [
        ("fp32", "fp16"),
        ("fp32", "fp16"),
        ("fp32", "fp32"),
        ("fp32", "fp32"),
        ("qat", "int8+fp16"),
        ("qat", "int8+fp16"),
    ]
    assert set(trt_rows.batch) == {1, 4} and (trt_rows.throughput_ips > 0).all()
    assert (trt_rows.latency_ms_p99 >= trt_rows.latency_ms_p50).all()
    assert len(bench[bench.backend == "onnxruntime-cpu"]) == 2 * 2  # the CPU benchmark is still there

    for variant, folder, precision, flags in [
        ("fp32", "fp32", "fp32", []),
        ("fp32", "fp16", "fp16", ["--fp16"]),
        ("qat_w8a8_q0", "fp16", "int8+fp16", ["--fp16", "--int8"]),
    ]:
        run = study / "runs/study/cnn/seed0" / variant
        record = read_json(run / f"trt/{folder}/b4.build.json")
        assert record["precision"] == precision
        assert record["engine_bytes"] == (run / f"trt/{folder}/b4.engine").stat().st_size
        assert [a for a in record["trtexec_args"] if a in ("--fp16", "--int8")] == flags
        result = read_json(run / f"bench_trt_{folder}.json")
        device_record = result["device"]
        assert device_record["transport"] == "ssh" and device_record["trt_version"] == "10.3.0"
        assert device_record["power_mode"] == {"name": "MAXN", "id": 0}
        assert device_record["l4t"] is None and device_record["clocks"] is None  # tolerated: not a real Jetson
        for row in result["rows"]:
            assert row["power_w"] == pytest.approx(7.8) and row["energy_mj_per_image"] > 0
    log = (study / "logs/study/trt_bench/cnn_seed0_qat_w8a8_q0_fp16.log").read_text()
    assert f"on ssh host '{HOST}': trtexec --loadEngine=model.engine" in log
    assert not list(device["remote_tmp"].glob("qatstudy-trt.*"))  # every job's scratch folder was removed


def test_another_host_reruns_nothing(study, device):
    env = {**device["env"], "QATSTUDY_JETSON_HOST": "another-jetson"}
    result = snakemake(study, env, "bench", "--dry-run")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_unreachable_device_fails_clearly_and_leaves_nothing(study, device):
    engines = study / "runs/study/cnn/seed0/fp32/trt"
    trt_result, table = (
        study / "runs/study/cnn/seed0/fp32/bench_trt_fp16.json",
        study / "results/study/tables/bench.csv",
    )
    shutil.rmtree(engines)  # as if the FP32 model had never been on the device
    trt_result.unlink()
    table.unlink()
    result = snakemake(study, {**device["env"], "QATSTUDY_JETSON_HOST": DOWN_HOST}, "bench")
    assert result.returncode != 0
    logs = [p.read_text() for p in (study / "logs/study/trt_build").glob("cnn_seed0_fp32_*_b*.log")]
    failed = [text for text in logs if "could not reach the TensorRT device" in text]
    assert failed and f"(host '{DOWN_HOST}') in 2 attempt(s)" in failed[0] and "Connection refused" in failed[0]
    assert not [p for p in engines.rglob("*") if p.is_file()]  # no engine, record or temporary file
    assert not trt_result.exists() and not table.exists()
    assert not list(study.rglob("*.tmp"))
