"""scripts/bench_qat_step.py: the FP32-versus-QAT step timing runs on a tiny model and reports both."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from qatstudy import quant
from qatstudy.objectives import QATSettings

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_qat_step", REPO / "scripts" / "bench_qat_step.py")
bench_qat_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_qat_step)

torch.set_num_threads(1)


def test_step_times_reports_fp32_and_qat_per_step():
    times = bench_qat_step.step_times("vit_convstem_tiny", {"embed_dim": 16, "depth": 1, "num_heads": 2},
                                      image_shape=(1, 28, 28), num_classes=10, scheme=quant.QuantScheme(4, 4),
                                      batch_size=8, lr=1e-3, weight_decay=0.0,
                                      objective=QATSettings(distill_weight=0.5, regularizer_weight=0.1),
                                      steps=2, warmup=1)
    assert set(times) == {"fp32_ms", "qat_ms", "tracking_ms", "ratio", "steps", "batch_size"}
    assert times["fp32_ms"] > 0 and times["qat_ms"] > times["tracking_ms"] > 0
    assert times["ratio"] == times["qat_ms"] / times["fp32_ms"]
    assert (times["steps"], times["batch_size"]) == (2, 8)


def test_table_flags_the_target():
    rows = [{"model": "vit", "arch": "vit_convstem_tiny", "bits": "w4a4", "batch_size": 128, "fp32_ms": 10.0,
             "qat_ms": 15.0, "tracking_ms": 1.0, "ratio": 1.5},
            {"model": "swin", "arch": "swin_convstem_tiny", "bits": "w4a4", "batch_size": 128, "fp32_ms": 10.0,
             "qat_ms": 20.0, "tracking_ms": 2.0, "ratio": 2.0}]
    lines = bench_qat_step.format_table(rows, threads=1).splitlines()
    assert "QAT/FP32" in lines[0] and len(lines) == 4
    assert lines[2].endswith("| 10.0 | 15.0 | 1.0 | 1.50x | met |")
    assert lines[3].endswith("| 2.00x | MISSED |")
