"""scripts/bench_qat_step.py: the FP32-versus-QAT step timing runs on a tiny model and reports both.
scripts/bench_planning.py: planning a grid, and a no-op run over its outputs, on a small grid (no timings checked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import yaml

from qatstudy import quant
from qatstudy.objectives import QATSettings

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_qat_step = load_script("bench_qat_step")
bench_planning = load_script("bench_planning")

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


def test_grid_config_numbers_copies_of_the_studys_models():
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    grid = bench_planning.grid_config(base, 6, [8, 6, 5, 4, 3, 2], [0, 1, 2])
    assert list(grid["models"]) == [*base["models"], "resnet-2", "mobilenet-2"]
    assert grid["models"]["resnet-2"] == base["models"]["resnet"] and len(grid["bits"]) == 6 == 2 * len(grid["seeds"])
    assert grid["ablation"] == base["ablation"] and base["bits"] == [8, 6, 4, 3, 2]  # the base is left alone


def test_planning_bench_finds_a_no_op_run_over_every_output(tmp_path):
    tiny = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    tiny["ablation"] = {"bits": [4], "arms": {"baseline": {}, "kd": {"distillation": {"weight": 0.5}}}}
    result = bench_planning.bench(tmp_path, bench_planning.grid_config(tiny, 3, [8, 4], [0]), repeats=1,
                                  log=lambda _: None)
    assert (result["models"], result["bits"], result["seeds"], result["arms"]) == (3, 2, 1, 2)
    assert 0 < result["jobs_all"] < result["jobs_all_ablation"]
    assert (tmp_path / "runs/cnn-2/seed0/ablation/kd_w4a4/metrics.json").is_file()  # every output was made
    assert result["noop_nothing_to_do"] and result["files_changed"] == [] and result["files"] > 100
    lines = bench_planning.report(result).splitlines()
    assert lines[0] == "grid: 3 models x 2 bit-widths x 1 seeds, 2 ablation arms"
    assert "nothing to be done" in lines[2] and lines[3].startswith("files changed by the no-op run: 0 of ")
