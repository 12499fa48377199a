"""The benchmark commands' code (`qatstudy bench-qat-step`, `bench-ort-int8` and `bench-planning`: the modules
qatstudy.bench_qat_step, bench_ort_int8 and bench_planning) runs on tiny models or grids and reports what they measure
(no timed assertions: timings on a shared machine prove nothing)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from helpers import make_tiny_dataset
from qatstudy import bench_ort_int8, bench_planning, bench_qat_step, quant, stages
from qatstudy.config import deployed_variants
from qatstudy.stage_settings import QATSettings, TrainSettings

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


def test_step_times_reports_fp32_and_qat_per_step():
    times = bench_qat_step.step_times(
        "vit_convstem_tiny",
        {"embed_dim": 16, "depth": 1, "num_heads": 2},
        image_shape=(1, 28, 28),
        num_classes=10,
        scheme=quant.QuantScheme(4, 4),
        batch_size=8,
        lr=1e-3,
        weight_decay=0.0,
        objective=QATSettings(distill_weight=0.5, regularizer_weight=0.1),
        steps=2,
        warmup=1,
    )
    assert set(times) == {"fp32_ms", "qat_ms", "tracking_ms", "ratio", "steps", "batch_size"}
    assert times["fp32_ms"] > 0 and times["qat_ms"] > times["tracking_ms"] > 0
    assert times["ratio"] == times["qat_ms"] / times["fp32_ms"]
    assert (times["steps"], times["batch_size"]) == (2, 8)


def test_table_flags_the_target():
    rows = [
        {
            "model": "vit",
            "arch": "vit_convstem_tiny",
            "bits": "w4a4",
            "batch_size": 128,
            "fp32_ms": 10.0,
            "qat_ms": 15.0,
            "tracking_ms": 1.0,
            "ratio": 1.5,
        },
        {
            "model": "swin",
            "arch": "swin_convstem_tiny",
            "bits": "w4a4",
            "batch_size": 128,
            "fp32_ms": 10.0,
            "qat_ms": 20.0,
            "tracking_ms": 2.0,
            "ratio": 2.0,
        },
    ]
    lines = bench_qat_step.format_table(rows, threads=1).splitlines()
    assert "QAT/FP32" in lines[0] and len(lines) == 4
    assert lines[2].endswith("| 10.0 | 15.0 | 1.0 | 1.50x | met |")
    assert lines[3].endswith("| 2.00x | MISSED |")


def test_grid_config_numbers_copies_of_the_studys_models():
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    grid = bench_planning.grid_config(base, 6, [8, 6, 5, 4, 3, 2], [0, 1, 2])
    assert list(grid["models"]) == [*base["models"], "resnet-2", "mobilenet-2"]
    assert grid["models"]["resnet-2"] == base["models"]["resnet"] and len(grid["bits"]) == 6
    assert grid["seeds"]["fp32"] == [0, 1, 2] and grid["seeds"]["qat"] == base["seeds"]["qat"]
    assert grid["ablation"] == base["ablation"] and base["bits"] == [8, 6, 4, 3, 2]  # the base is left alone


def test_planning_bench_finds_a_no_op_run_over_every_output(tmp_path):
    tiny = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    tiny["ablation"] = {"bits": [4], "arms": {"baseline": {}, "kd": {"distillation": {"weight": 0.5}}}}
    result = bench_planning.bench(
        tmp_path, bench_planning.grid_config(tiny, 3, [8, 4], [0]), repeats=1, log=lambda _: None
    )
    assert (result["models"], result["bits"], result["seeds"], result["arms"]) == (3, 2, 1, 2)
    assert 0 < result["jobs_all"] < result["jobs_all_ablation"]
    assert (tmp_path / "runs/grid/cnn-2/seed0/ablation/kd_w4a4_q0/metrics.json").is_file()  # every output was made
    assert result["noop_nothing_to_do"] and result["files_changed"] == [] and result["files"] > 100
    lines = bench_planning.report(result).splitlines()
    assert lines[0] == "grid: 3 models x 2 bit-widths x 1 seeds, 2 ablation arms"
    assert "nothing to be done" in lines[2] and lines[3].startswith("files changed by the no-op run: 0 of ")


TINY_VIT = {"embed_dim": 16, "depth": 1, "num_heads": 2}


def test_int8_benchmark_exports_times_and_scores_a_tiny_study(tmp_path):
    data = str(make_tiny_dataset(tmp_path / "data"))
    run = tmp_path / "runs" / "tiny" / "seed0"
    settings = TrainSettings(epochs=1, batch_size=16, lr=1e-3, weight_decay=0.0)
    identity = {"model": "tiny", "family": "vit", "arch": "vit_convstem_tiny", "kwargs": TINY_VIT}
    stages.train_fp32(
        data=data,
        arch="vit_convstem_tiny",
        kwargs=TINY_VIT,
        identity=identity,
        settings=settings,
        seed=0,
        pretrained=False,
        checkpoint=str(run / "fp32/model.pt"),
        metrics=str(run / "fp32/metrics.json"),
        log=lambda _: None,
    )
    stages.qat(
        data=data,
        fp32_checkpoint=str(run / "fp32/model.pt"),
        scheme=quant.QuantScheme(4, 4),
        identity=identity,
        settings=settings,
        calibration="minmax",
        calib_images=32,
        seed=0,
        checkpoint=str(run / "qat_w4a4/model.pt"),
        metrics=str(run / "qat_w4a4/metrics.json"),
        log=lambda _: None,
    )
    exported = bench_ort_int8.export_variants(
        run, ["fp32", "qat_w4a4"], tmp_path, data=data, calibration={"images": 32, "method": "mse"}
    )
    assert exported["qat_w4a4"]["onnx"] == tmp_path / "qat_w4a4.onnx" and (tmp_path / "qat_w4a4_trt.onnx").exists()
    rows = bench_ort_int8.compare(exported, batches=[1, 4], threads=1, warmup=1, rounds=2, iterations=1, data=data)
    assert [(r["backend"], r["variant"], r["batch"]) for r in rows] == [
        ("onnxruntime-cpu", "qat_w4a4", 1),
        ("onnxruntime-cpu", "qat_w4a4", 4),
    ]
    for r in rows:
        assert (
            r["fp32_ms"] > 0 and r["int8_ms"] > 0 and r["ratio"] == r["int8_ms"] / r["fp32_ms"] and r["cpu_ratio"] > 0
        )
        assert r["target"] == 0.85 and r["met"] == (r["ratio"] <= 0.85)
        assert r["torch_top1"] == exported["qat_w4a4"]["metrics"]["test_top1"]
        assert 0 <= r["onnx_top1"] <= 100 and r["top1_delta"] == r["onnx_top1"] - r["torch_top1"]
        assert r["top1_met"] == (abs(r["top1_delta"]) <= 0.2)
        assert "QGemm" in r["integer_kernels"] and "QLinearConv" in r["integer_kernels"]
    lines = bench_ort_int8.format_table(rows).splitlines()
    assert len(lines) == 4 and "INT8/FP32" in lines[0]

    # OpenVINO times the TensorRT layout, and checks its classes against onnxruntime on the same file
    rows = bench_ort_int8.compare(
        exported, batches=[4], threads=1, warmup=1, rounds=2, iterations=1, data=data, backend="openvino-cpu"
    )
    (row,) = rows
    assert row["backend"] == "openvino-cpu" and row["target"] == 1.0  # no OpenVINO target for this model
    assert row["agreement"] >= 0.95 and 0 <= row["onnx_top1"] <= 100
    assert row["integer_kernels"].endswith("compute layers") and not row["integer_kernels"].startswith("0 of")


def test_int8_table_flags_missed_targets():
    row = {
        "model": "resnet",
        "backend": "onnxruntime-cpu",
        "variant": "qat_w8a8",
        "batch": 64,
        "threads": 1,
        "fp32_ms": 10.0,
        "int8_ms": 7.0,
        "ratio": 0.7,
        "cpu_ratio": 0.72,
        "target": 0.67,
        "met": False,
        "torch_top1": 91.0,
        "onnx_top1": 90.7,
        "top1_delta": -0.3,
        "top1_met": False,
        "integer_kernels": "21 QLinearConv",
    }
    line = bench_ort_int8.format_table([row]).splitlines()[2]
    assert "| 0.70x | 0.72x | <= 0.67x | MISSED | 91.00 | 90.70 | -0.30 | MISSED |  | 21 QLinearConv |" in line
    met = bench_ort_int8.format_table([{**row, "ratio": 0.6, "met": True, "onnx_top1": None}]).splitlines()[2]
    assert "| 0.60x | 0.72x | <= 0.67x | met |  |  |  |  |  | 21 QLinearConv |" in met
    openvino = bench_ort_int8.format_table([{**row, "agreement": 0.995}]).splitlines()[2]
    assert "| MISSED | 99.50% | 21 QLinearConv |" in openvino


def test_openvino_targets_are_per_default_model_and_never_above_one():
    assert bench_ort_int8.target("openvino-cpu", "resnet", "cnn") == 0.40
    assert bench_ort_int8.target("openvino-cpu", "efficientnet", "cnn") == 1.0
    assert bench_ort_int8.target("onnxruntime-cpu", "resnet", "cnn") == 0.67


def test_ort_int8_compares_the_run_folders_the_workflow_writes():
    config = {"bits": [8, 4], "seeds": {"qat": [1, 2], "qat_by_bits": {8: [0]}}}
    assert deployed_variants(config, ["w8a8", "w4a4"]) == ["fp32", "qat_w8a8_q0", "qat_w4a4_q1"]
    assert deployed_variants(config, ["w4a4"], qat_seed=2) == ["fp32", "qat_w4a4_q2"]
