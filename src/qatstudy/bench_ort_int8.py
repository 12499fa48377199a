"""Is the INT8 model faster than FP32 on a CPU backend (onnxruntime, or OpenVINO), and does it keep PyTorch's
accuracy?

For each model of a study, exports the FP32 checkpoint and each chosen QAT checkpoint of a finished run folder
with this code (`export.export_onnx`: `model.onnx` for onnxruntime, the TensorRT layout for OpenVINO), times every
INT8 model against FP32 side by side in one process (`bench.interleaved_latency`: rounds that alternate the
models, at each batch size and the config's bench threads), and prints the p50 latency ratios INT8/FP32 (wall
clock, and this process's CPU time, which other processes' load inflates less) with the targets — onnxruntime: at
most 0.67x for CNNs, 0.85x for ViTs; OpenVINO: per model of the default study (ResNet 0.40x, MobileNet 0.55x, ViT
0.60x, Swin 0.66x); never above 1x. Then the deployed test top-1 against PyTorch's fake-quant test top-1 (the run's
metrics.json), which must agree within 0.2 points (on OpenVINO also the share of test images whose class agrees
with onnxruntime on the same file), and which layers run as integer kernels.

    uv run qatstudy bench-ort-int8 --runs runs/default --data runs/default/splits.npz
    uv run qatstudy bench-ort-int8 --runs runs/default --data ... --models resnet vit --bits w8a8 w4a4 --rounds 20
    uv run qatstudy bench-ort-int8 --runs runs/default --data ... --backend openvino-cpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .backends import ONNXRUNTIME, OPENVINO, deployed_accuracy, openvino_model, precision_census, predictor
from .bench import interleaved_latency
from .config import deployed_variants, load_config
from .export import export_onnx, onnx_top1
from .io import read_json

TARGETS = {"cnn": 0.67, "vit": 0.85}  # INT8 / FP32 latency on onnxruntime, per model family
OPENVINO_TARGETS = {"resnet": 0.40, "mobilenet": 0.55, "vit": 0.60, "swin": 0.66}  # on OpenVINO, per default model
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
        exported[variant] = {
            "metrics": read_json(run / variant / "metrics.json"),
            "report": report,
            "onnx": onnx_path,
            "trt": out / f"{variant}_trt.onnx",
        }
    return exported


def target(backend: str, model: str, family: str) -> float:
    """The INT8 / FP32 latency ratio to meet: the backend's target for the model, never above 1x."""
    wanted = OPENVINO_TARGETS.get(model, NEVER_SLOWER) if backend == OPENVINO else TARGETS[family]
    return min(wanted, NEVER_SLOWER)


def _deployed(backend: str, path: Path, data: str, threads: int) -> dict:
    """Test top-1 on `backend` (and, on OpenVINO, agreement with onnxruntime on the same file)."""
    if backend == ONNXRUNTIME:
        return {"onnx_top1": onnx_top1(path, data, threads=threads)}
    measured = deployed_accuracy(predictor(backend, path, threads), predictor(ONNXRUNTIME, path, threads), data)
    return {"onnx_top1": measured["deployed_top1"], "agreement": measured["agreement"]}


def _integer_kernels(backend: str, entry: dict, threads: int) -> str:
    """What runs as integer kernels: onnxruntime's fused operators, or OpenVINO's compute layers in integers."""
    if backend == ONNXRUNTIME:
        return ", ".join(f"{n} {op}" for op, n in entry["report"]["ort_ops"].items())
    census = precision_census(openvino_model(entry["trt"], threads))
    return f"{census['integer_compute_layers']} of {census['compute_layers']} compute layers"


def compare(
    exported: dict[str, dict],
    *,
    batches: list[int],
    threads: int,
    warmup: int,
    rounds: int,
    iterations: int,
    data: str | None,
    backend: str = ONNXRUNTIME,
) -> list[dict]:
    """One row per quantized variant and batch size: latencies on `backend` against FP32 and the target; with
    `data`, the deployed test top-1 against PyTorch's."""
    fp32 = exported["fp32"]["metrics"]
    file_key = "onnx" if backend == ONNXRUNTIME else "trt"  # OpenVINO runs the explicit-quantization file
    quantized = {v: e for v, e in exported.items() if v != "fp32"}
    deployed = {v: _deployed(backend, e[file_key], data, threads) for v, e in quantized.items()} if data else {}
    kernels = {v: _integer_kernels(backend, e, threads) for v, e in quantized.items()}
    rows = []
    for batch in batches:
        times = interleaved_latency(
            {v: e[file_key] for v, e in exported.items()},
            tuple(fp32["input_shape"]),
            batch,
            threads=threads,
            warmup=warmup,
            rounds=rounds,
            iterations=iterations,
            backend=backend,
        )
        for variant, e in quantized.items():
            ratio = times[variant]["wall_ms_p50"] / times["fp32"]["wall_ms_p50"]
            goal = target(backend, fp32["model"], fp32["family"])
            row = {
                "model": fp32["model"],
                "family": fp32["family"],
                "backend": backend,
                "variant": variant,
                "batch": batch,
                "threads": threads,
                "fp32_ms": times["fp32"]["wall_ms_p50"],
                "int8_ms": times[variant]["wall_ms_p50"],
                "ratio": ratio,
                "cpu_ratio": times[variant]["cpu_ms_p50"] / times["fp32"]["cpu_ms_p50"],
                "target": goal,
                "met": ratio <= goal,
                "integer_kernels": kernels[variant],
                "torch_top1": e["metrics"]["test_top1"],
                "onnx_top1": None,
                **deployed.get(variant, {}),
            }
            if row["onnx_top1"] is not None:
                row["top1_delta"] = row["onnx_top1"] - row["torch_top1"]
                row["top1_met"] = abs(row["top1_delta"]) <= MAX_TOP1_DELTA
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | backend | variant | batch | threads | FP32 ms p50 | INT8 ms p50 | INT8/FP32 | CPU-time ratio | "
        "target | latency | torch top-1 | deployed top-1 | delta | accuracy | agreement | integer kernels |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---:|---|",
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
                    r["backend"],
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
                    "" if r.get("agreement") is None else f"{100 * r['agreement']:.2f}%",
                    r["integer_kernels"],
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
                backend=args.backend,
            )
    print(format_table(rows))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
