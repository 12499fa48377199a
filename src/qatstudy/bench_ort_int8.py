"""Is the INT8 model faster than FP32 on onnxruntime CPU, and does it keep PyTorch's accuracy?

For each model of a study, exports the FP32 checkpoint and each chosen QAT checkpoint of a finished run folder
with this code (`export.export_onnx`: the onnxruntime layout, `model.onnx`), times every INT8 model against FP32
side by side in one process (`bench.interleaved_latency`: rounds that alternate the models, at each batch size and
the config's bench threads), and prints the p50 latency ratios INT8/FP32 (wall clock, and this process's CPU time,
which other processes' load inflates less) with the targets: at most 0.67x for CNNs, at most 0.85x for ViTs,
never above 1x. Then the deployed (onnxruntime) test top-1 against PyTorch's fake-quant test top-1 (the run's
metrics.json), which must agree within 0.2 points, and how many layers onnxruntime fused into integer kernels.

    uv run qatstudy bench-ort-int8 --runs runs/default --data runs/default/splits.npz
    uv run qatstudy bench-ort-int8 --runs runs/default --data ... --models resnet vit --bits w8a8 w4a4 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .bench import interleaved_latency
from .config import deployed_variants, load_config
from .export import export_onnx, onnx_top1
from .io import read_json

TARGETS = {"cnn": 0.67, "vit": 0.85}  # INT8 / FP32 latency, per model family
NEVER_SLOWER = 1.0
MAX_TOP1_DELTA = 0.2  # points between deployed and PyTorch fake-quant top-1


def export_variants(run: Path, variants: list[str], out: Path, *, data: str, calibration: dict) -> dict[str, dict]:
    """Export each variant of one model's run folder (`run/<variant>/model.pt`) into `out`; per variant its
    metrics, the export report and the ONNX path."""
    exported = {}
    for variant in variants:
        onnx_path = out / f"{variant}.onnx"
        report = export_onnx(
            run / variant / "model.pt",
            onnx_path,
            out / f"{variant}_trt.onnx",
            data=data,
            calib_images=calibration["images"],
            calib_method=calibration["method"],
        )
        exported[variant] = {"metrics": read_json(run / variant / "metrics.json"), "report": report, "onnx": onnx_path}
    return exported


def compare(
    exported: dict[str, dict],
    *,
    batches: list[int],
    threads: int,
    warmup: int,
    rounds: int,
    iterations: int,
    data: str | None,
) -> list[dict]:
    """One row per quantized variant and batch size: latencies against FP32 and the targets; with `data`, the
    deployed test top-1 against PyTorch's."""
    fp32 = exported["fp32"]["metrics"]
    rows = []
    top1 = {v: onnx_top1(e["onnx"], data, threads=threads) for v, e in exported.items() if v != "fp32"} if data else {}
    for batch in batches:
        times = interleaved_latency(
            {v: e["onnx"] for v, e in exported.items()},
            tuple(fp32["input_shape"]),
            batch,
            threads=threads,
            warmup=warmup,
            rounds=rounds,
            iterations=iterations,
        )
        for variant, e in exported.items():
            if variant == "fp32":
                continue
            ratio = times[variant]["wall_ms_p50"] / times["fp32"]["wall_ms_p50"]
            target = TARGETS[fp32["family"]]
            row = {
                "model": fp32["model"],
                "family": fp32["family"],
                "variant": variant,
                "batch": batch,
                "threads": threads,
                "fp32_ms": times["fp32"]["wall_ms_p50"],
                "int8_ms": times[variant]["wall_ms_p50"],
                "ratio": ratio,
                "cpu_ratio": times[variant]["cpu_ms_p50"] / times["fp32"]["cpu_ms_p50"],
                "target": target,
                "met": ratio <= min(target, NEVER_SLOWER),
                "ort_ops": e["report"]["ort_ops"],
                "torch_top1": e["metrics"]["test_top1"],
                "onnx_top1": top1.get(variant),
            }
            if row["onnx_top1"] is not None:
                row["top1_delta"] = row["onnx_top1"] - row["torch_top1"]
                row["top1_met"] = abs(row["top1_delta"]) <= MAX_TOP1_DELTA
            rows.append(row)
    return rows


def _fused(ops: dict) -> str:
    return ", ".join(f"{n} {op}" for op, n in ops.items())


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | batch | threads | FP32 ms p50 | INT8 ms p50 | INT8/FP32 | CPU-time ratio | target | "
        "latency | torch top-1 | ONNX top-1 | delta | accuracy | onnxruntime runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        accuracy = (
            ["", "", "", ""]
            if r["onnx_top1"] is None
            else [
                f"{r['torch_top1']:.2f}",
                f"{r['onnx_top1']:.2f}",
                f"{r['top1_delta']:+.2f}",
                "met" if r["top1_met"] else "MISSED",
            ]
        )
        lines.append(
            " | ".join(
                [
                    f"| {r['model']}",
                    r["variant"],
                    str(r["batch"]),
                    str(r["threads"]),
                    f"{r['fp32_ms']:.2f}",
                    f"{r['int8_ms']:.2f}",
                    f"{r['ratio']:.2f}x",
                    f"{r['cpu_ratio']:.2f}x",
                    f"<= {r['target']}x",
                    "met" if r["met"] else "MISSED",
                    *accuracy,
                    _fused(r["ort_ops"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """`qatstudy bench-ort-int8`: export, time and print the table for the config's models (options in qatstudy.cli)."""
    config = load_config(args.config)
    bench = config["bench"]
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        rows = []
        for model in args.models or list(config["models"]):
            folder = out / model
            folder.mkdir(parents=True, exist_ok=True)
            exported = export_variants(
                Path(args.runs) / model / f"seed{args.seed}",
                deployed_variants(config, args.bits, args.qat_seed),
                folder,
                data=args.data,
                calibration=config["calibration"],
            )
            rows += compare(
                exported,
                batches=args.batches or bench["batch_sizes"],
                threads=bench["threads"],
                warmup=bench["warmup"],
                rounds=args.rounds,
                iterations=args.iterations,
                data=None if args.no_accuracy else args.data,
            )
    print(format_table(rows))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
