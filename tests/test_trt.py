"""TensorRT deployment: trtexec commands, parsers on trtexec's and Jetson's recorded formats, the ssh transport's
retries, and the build and benchmark jobs end to end on this machine with the trtexec stand-in (local transport).

The fixtures under tests/fixtures/trtexec are hand-recorded in the tools' formats, not captured on a device
(see the README there)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qatstudy import remote, trt
from qatstudy.trt_jobs import benchmark_engines, build_engine, check_same_device

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"
STAND_INS = Path(__file__).parent / "stand_ins"
BUILD = {"float_precision": "fp16", "strongly_typed": False, "workspace_mib": 256}
BENCH = {
    "warmup_ms": 1000,
    "duration_s": 10,
    "iterations": 100,
    "cuda_graph": True,
    "data_transfers": False,
    "spin_wait": False,
    "power_interval_ms": 100,
    "power_rails": None,
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ------------------------------------------------------------------------------------------ commands


@pytest.mark.parametrize(
    ("settings", "quantized", "flags"),
    [
        (BUILD, True, ["--fp16", "--int8"]),  # Q/DQ layers in INT8, the rest in FP16
        (BUILD, False, ["--fp16"]),  # the FP32 model deployed in FP16
        ({**BUILD, "float_precision": "fp32"}, False, []),
        ({**BUILD, "strongly_typed": True}, True, ["--stronglyTyped"]),  # types from the ONNX file only
    ],
)
def test_precision_flags(settings, quantized, flags):
    assert trt.precision_flags(settings, quantized) == flags
    args = trt.build_args(settings, quantized=quantized, batch=8, image_shape=[1, 28, 28])
    assert [a for a in args if a in ("--fp16", "--int8", "--stronglyTyped")] == flags


def test_build_and_bench_arguments():
    build = trt.build_args(BUILD, quantized=True, batch=8, image_shape=[1, 28, 28])
    for arg in [
        "--onnx=model.onnx",
        "--saveEngine=model.engine",
        "--minShapes=input:8x1x28x28",
        "--optShapes=input:8x1x28x28",
        "--maxShapes=input:8x1x28x28",
        "--memPoolSize=workspace:256M",
        "--skipInference",
        "--profilingVerbosity=detailed",
        "--exportLayerInfo=layers.json",
    ]:
        assert arg in build
    bench = trt.bench_args(BENCH, batch=8, image_shape=[1, 28, 28])
    for arg in [
        "--loadEngine=model.engine",
        "--shapes=input:8x1x28x28",
        "--warmUp=1000",
        "--duration=10",
        "--iterations=100",
        "--percentile=50,90,99",
        "--exportTimes=times.json",
        "--separateProfileRun",
        "--exportProfile=profile.json",
        "--useCudaGraph",
        "--noDataTransfers",
    ]:
        assert arg in bench
    assert "--useSpinWait" not in bench
    with_copies = trt.bench_args({**BENCH, "data_transfers": True, "cuda_graph": False}, batch=1, image_shape=[3])
    assert "--noDataTransfers" not in with_copies and "--useCudaGraph" not in with_copies


def test_scripts_are_posix_shell():
    script = trt.trtexec_script(
        trt.bench_args(BENCH, batch=1, image_shape=[1, 4, 4]), [trt.ENGINE_FILE], power_interval_ms=100
    )
    for text in (script, trt.probe_script()):
        subprocess.run(["sh", "-n", "-c", text], check=True)  # parses under a POSIX shell
    assert "tar xf -" in script and "tar cf - ." in script and "rm -f model.engine" in script


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("number", "version"), [(8601, "8.6.1"), (100300, "10.3.0"), (101300, "10.13.0")])
def test_banner_version_numbers(number, version):
    assert trt.version_from_number(number) == version


def test_parse_build_log():
    report = trt.parse_trtexec_log(fixture("build_int8.log"))
    assert report["status"] == "passed" and report["trt_version"] == "10.3.0"
    assert report["device_name"] == "Orin" and report["compute_capability"] == "8.7"
    assert report["engine_mib"] == pytest.approx(1.87305) and report["build_s"] == pytest.approx(66.5148)
    # repeated warnings are kept once: TensorRT reads the unsigned activations' UINT8 Q/DQ as INT8
    assert len(report["warnings"]) == 1 and "UINT8 zero_point" in report["warnings"][0]
    assert "throughput_qps" not in report


def test_failed_build_says_why():
    text = fixture("build_failed.log")
    report = trt.parse_trtexec_log(text)
    assert report["status"] == "failed" and "Failed to parse onnx file" in report["errors"]
    assert "TensorRT only supports symmetric quantization" in trt.log_tail(text)  # the unprefixed explanation


def test_parse_bench_log():
    report = trt.parse_trtexec_log(fixture("bench_int8_b1.log"))
    assert report["throughput_qps"] == pytest.approx(2150.37)
    assert report["latency_ms"] == pytest.approx(
        {
            "min": 0.43457,
            "max": 1.02539,
            "mean": 0.460213,
            "median": 0.458008,
            "p50": 0.458008,
            "p90": 0.468994,
            "p99": 0.515137,
        }
    )
    assert report["gpu_compute_ms"]["mean"] == pytest.approx(0.460213)
    assert report["h2d_ms"]["max"] == 0.0 and report["host_walltime_s"] == pytest.approx(10.0003)
    assert report["context_device_mib"] == pytest.approx(0.192383)
    assert report["inference_started"] == datetime(2024, 6, 12, 10, 30, 0)
    assert report["timed_run_ended"] == datetime(2024, 6, 12, 10, 30, 11)


def test_export_times_and_bench_row():
    report = trt.parse_trtexec_log(fixture("bench_int8_b1.log"))
    times = trt.parse_export_times(fixture("times_b1.json"))
    assert len(times) == 5 and times[4]["latencyMs"] == pytest.approx(0.52)
    power = {
        "power_w": 10.5,
        "power_rails": ["VDD_GPU_SOC"],
        "rail_mean_mw": {},
        "power_samples": 9,
        "power_window": "timed run",
    }
    row = trt.bench_row(report, times, power, batch=4, engine_bytes=1000, onnx_bytes=3000, precision="int8+fp16")
    assert row["backend"] == "tensorrt" and row["batch"] == 4 and row["iterations"] == 5
    assert row["latency_ms_p50"] == pytest.approx(0.46)
    assert row["latency_ms_p99"] == pytest.approx(np.percentile([0.45, 0.46, 0.47, 0.44, 0.52], 99))
    assert row["throughput_ips"] == pytest.approx(2150.37 * 4)  # trtexec counts queries of 4 images
    assert row["peak_mem_bytes"] == 1000 + round(0.192383 * 2**20)
    assert (row["model_bytes"], row["onnx_bytes"]) == (1000, 3000)  # the engine, and the ONNX file it came from
    assert row["energy_mj_per_image"] == pytest.approx(10.5 / (2150.37 * 4) * 1000)
    json.dumps(row)  # what the bench JSON holds must serialise
    with pytest.raises(ValueError, match="exportTimes"):
        trt.parse_export_times('{"Layers": []}')


def test_tegrastats_power_inside_the_timed_run():
    samples = trt.parse_tegrastats(fixture("tegrastats_agx_orin.log"))
    assert len(samples) == 16
    assert samples[2].rails_mw == {"VDD_GPU_SOC": 5000, "VDD_CPU_CV": 900, "VIN_SYS_5V0": 3200}  # instant values
    report = trt.parse_trtexec_log(fixture("bench_int8_b1.log"))
    window = trt.timed_window(report, warmup_ms=1000)
    assert window == (datetime(2024, 6, 12, 10, 30, 2), datetime(2024, 6, 12, 10, 30, 11))
    power = trt.power_summary(samples, window)
    # only the samples stamped 10:30:02 to 10:30:10 lie wholly inside; AGX Orin has no VDD_IN: every rail sums
    assert power["power_samples"] == 9 and power["power_window"] == "timed run"
    assert power["power_w"] == pytest.approx(6.0 + 1.0 + 3.5)
    assert trt.power_summary(samples, window, ["VDD_GPU_SOC"])["power_w"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="VDD_IN"):
        trt.power_summary(samples, window, ["VDD_IN"])
    assert trt.power_summary(samples, None)["power_window"] == "whole trtexec run"
    assert trt.power_summary([], window) is None


def test_orin_nano_power_is_vdd_in():
    power = trt.power_summary(trt.parse_tegrastats(fixture("tegrastats_orin_nano.log")), None)
    assert power["power_rails"] == ["VDD_IN"] and power["power_w"] == pytest.approx(7.0)


def test_nvidia_smi_power():
    samples = trt.parse_power_log(fixture("nvidia_smi_power.csv"), "nvidia-smi\n")
    assert [s.rails_mw[trt.NVIDIA_SMI_RAIL] for s in samples] == pytest.approx([61520, 240100, 250300])  # N/A skipped
    window = (datetime(2024, 6, 12, 10, 30, 0, 300000), datetime(2024, 6, 12, 10, 30, 1))
    assert trt.power_summary(samples, window)["power_w"] == pytest.approx(245.2)


def test_device_record_of_a_jetson():
    device = trt.parse_probe(fixture("probe_agx_orin.txt"))
    assert device["l4t"] == "36.4.0" and device["nv_tegra_release"].startswith("# R36 (release)")
    assert device["power_mode"] == {"name": "MAXN", "id": 0}
    assert device["clocks"]["gpu_at_max"] and device["clocks"]["emc"]["current_hz"] == 3199000000
    assert device["trt_version"] == "10.3.0" and device["trtexec"] == "/usr/src/tensorrt/bin/trtexec"
    assert device["gpu"] is None and device["hostname"] == "agx-orin"


def test_device_record_without_jetson_tools():
    device = trt.parse_probe(fixture("probe_desktop.txt"))
    assert device["l4t"] is None and device["power_mode"] is None and device["clocks"] is None
    assert device["trt_version"] == "8.6.1" and device["gpu"] == "NVIDIA GeForce RTX 4090, 550.54.15"


def test_expected_version_is_a_prefix():
    trt.check_trt_version("10.3.0", "10.3", "the device")
    trt.check_trt_version("10.3.0", None, "the device")
    with pytest.raises(RuntimeError, match="has TensorRT 10.30.0, but trt.expected_version is 10.3"):
        trt.check_trt_version("10.30.0", "10.3", "the device")
    with pytest.raises(RuntimeError, match="could not read"):
        trt.check_trt_version(None, "10.3", "the device")


def test_layer_precisions():
    assert trt.layer_precisions(fixture("layers_int8.json")) == {"fp32": 1, "int8": 1, "fp16": 1}


# ------------------------------------------------------------------------------------------ transport


def test_ssh_command_and_environment():
    transport = remote.Transport.from_environment(
        "ssh", {remote.HOST_ENV: "orin", remote.SSH_CONFIG_ENV: "/c", remote.ATTEMPTS_ENV: "5"}
    )
    assert (transport.host, transport.ssh_config, transport.attempts) == ("orin", "/c", 5)
    argv = transport.argv("echo 'hi'")
    assert argv[:3] == ["ssh", "-F", "/c"] and "BatchMode=yes" in argv and argv[-2] == "orin"
    assert argv[-1] == "sh -c 'echo '\"'\"'hi'\"'\"''"
    assert remote.Transport.from_environment("ssh", {}).host == "jetson"  # the ssh alias
    assert remote.Transport.from_environment("local").argv("true") == ["sh", "-c", "true"]


def test_ssh_failures_are_retried_and_then_reported(monkeypatch):
    calls = []

    def fake_run(argv, **_):
        calls.append(argv)
        status = 255 if len(calls) < 3 else 0
        refused = b"ssh: connect to host orin port 22: Connection refused"
        return subprocess.CompletedProcess(argv, status, b"out", refused)

    monkeypatch.setattr(remote.subprocess, "run", fake_run)
    transport = remote.Transport("ssh", "orin", attempts=3, retry_wait_s=0)
    assert transport.run("true", log=lambda _: None).returncode == 0 and len(calls) == 3
    calls.clear()
    with pytest.raises(remote.DeviceUnreachable, match=r"host 'orin'\) in 2 attempt\(s\): ssh: connect to host"):
        remote.Transport("ssh", "orin", attempts=2, retry_wait_s=0).run("true", log=lambda _: None)
    assert len(calls) == 2
    # a failing remote command (not 255) is the command's failure: not retried
    monkeypatch.setattr(remote.subprocess, "run", lambda argv, **_: subprocess.CompletedProcess(argv, 1, b"", b""))
    assert transport.run("false", log=lambda _: None).returncode == 1


def test_tar_streams_round_trip():
    assert remote.unpack(remote.pack({"a.txt": b"x", "model.onnx": b"\0" * 10})) == {
        "a.txt": b"x",
        "model.onnx": b"\0" * 10,
    }
    assert remote.unpack(b"") == {}


def test_engines_built_elsewhere_are_refused():
    build = {"batch": 1, "device": trt.parse_probe(fixture("probe_agx_orin.txt"))}
    check_same_device(build, {**build["device"], "hostname": "another-orin"}, "there")  # same L4T and TensorRT
    with pytest.raises(RuntimeError, match="-R trt_build"):
        check_same_device(build, trt.parse_probe(fixture("probe_desktop.txt")), "this machine")


# ------------------------------------------------------------- the jobs, locally, with the stand-in trtexec


def tiny_qdq_model(path: Path) -> None:
    """input [N,1,4,4] -> uint8 Q/DQ (an unsigned activation, as after ReLU) -> Flatten -> Gemm -> logits."""
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
        helper.make_node("Flatten", ["dq"], ["flat"]),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(np.float32(0.05), "scale"),
        numpy_helper.from_array(np.uint8(0), "zero"),
        numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32), "weight"),
        numpy_helper.from_array(np.zeros(3, np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture
def stand_in_job(tmp_path, monkeypatch) -> Path:
    """A folder with a quantized model's ONNX file and metrics, and this machine set up as the device: the
    stand-ins on PATH, trtexec run by this interpreter."""
    monkeypatch.setenv(remote.TRTEXEC_ENV, str(STAND_INS / "trtexec"))
    monkeypatch.setenv("PATH", f"{STAND_INS}:{Path(sys.executable).parent}:/usr/bin:/bin")
    tiny_qdq_model(tmp_path / "model.onnx")
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "model": "m",
                "family": "cnn",
                "method": "qat",
                "w_bits": 8,
                "a_bits": 8,
                "seed": 0,
                "input_shape": [1, 4, 4],
                "packed_bytes": 123,
            }
        )
    )
    return tmp_path


def build_locally(job: Path, batch: int, expected_version: str) -> None:
    build_engine(
        onnx=str(job / "model.onnx"),
        metrics=str(job / "metrics.json"),
        engine=str(job / f"trt/b{batch}.engine"),
        record=str(job / f"trt/b{batch}.build.json"),
        layers=str(job / f"trt/b{batch}.layers.json"),
        batch=batch,
        settings=BUILD,
        trt_config={"transport": "local", "expected_version": expected_version},
        log=lambda _: None,
    )


def test_build_and_benchmark_locally_with_the_stand_in(stand_in_job):
    out = stand_in_job / "trt"
    build_locally(stand_in_job, 2, "10.3")
    record = json.loads((out / "b2.build.json").read_text())
    assert record["precision"] == "int8+fp16" and "--int8" in record["trtexec_args"]
    assert record["trt_version"] == "10.3.0" and record["device"]["transport"] == "local"
    assert record["device"]["power_mode"] == {"name": "MAXN", "id": 0}  # the nvpmodel stand-in
    assert any("stand-in trtexec" in w for w in record["warnings"]) and record["layer_precisions"] == {"int8": 1}
    assert record["engine_bytes"] == (out / "b2.engine").stat().st_size
    assert record["onnx_bytes"] == (stand_in_job / "model.onnx").stat().st_size
    settings = {**BENCH, "warmup_ms": 50, "duration_s": 1, "iterations": 5, "power_interval_ms": 50}
    benchmark_engines(
        engines=[str(out / "b2.engine")],
        records=[str(out / "b2.build.json")],
        metrics=str(stand_in_job / "metrics.json"),
        result=str(stand_in_job / "bench_trt.json"),
        profiles=[str(out / "b2.profile.json")],
        settings=settings,
        trt_config={"transport": "local", "expected_version": None},
        log=lambda _: None,
    )
    result = json.loads((stand_in_job / "bench_trt.json").read_text())
    assert result["method"] == "qat" and result["device"]["trt_version"] == "10.3.0"
    assert result["packed_bytes"] == 123
    [row] = result["rows"]
    assert row["onnx_bytes"] == record["onnx_bytes"] and row["model_bytes"] == record["engine_bytes"]
    assert row["backend"] == "tensorrt" and row["batch"] == 2 and row["latency_ms_p99"] >= row["latency_ms_p50"] > 0
    assert row["iterations"] >= 5 and row["throughput_ips"] > 0
    assert row["power_w"] == pytest.approx(7.8)  # the tegrastats stand-in's rails: 4000 + 800 + 3000 mW
    assert row["energy_mj_per_image"] == pytest.approx(7.8 / row["throughput_ips"] * 1000)
    assert json.loads((out / "b2.profile.json").read_text())[0]["count"] > 0


def test_wrong_trt_version_fails_before_building(stand_in_job):
    with pytest.raises(RuntimeError, match="has TensorRT 10.3.0, but trt.expected_version is 8.6"):
        build_locally(stand_in_job, 1, "8.6")
    assert sorted(p.name for p in stand_in_job.iterdir()) == ["metrics.json", "model.onnx"]  # nothing written
