"""Tidy result tables from the per-run JSON files, and the summary tables (per model, by bit-width, deployed
benchmarks), rendered as Markdown and LaTeX by qatstudy.tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .io import read_json
from .labels import bits_heading
from .provenance import PROVENANCE_COLUMNS, provenance_columns
from .records import BENCH_RUN_FIELDS
from .stats import mean_ci_text, per_fp32_seed
from .tables import Table, markdown_table

ACCURACY_COLUMNS = [
    "model",
    "family",
    "arch",
    "method",
    "w_bits",
    "a_bits",
    "seed",
    "qat_seed",
    "top1",
    "val_top1",
    "onnx_top1",
    "params",
    "fp32_bytes",
    "packed_bytes",
    "onnx_bytes",
    "quant",
    "objective",
    *PROVENANCE_COLUMNS,
]
BENCH_COLUMNS = [
    "model",
    "family",
    "method",
    "w_bits",
    "a_bits",
    "seed",
    "backend",
    "precision",
    "batch",
    "threads",
    "latency_ms_p50",
    "latency_ms_p99",
    "latency_ms_mean",
    "throughput_ips",
    "model_bytes",
    "onnx_bytes",
    "packed_bytes",
    "peak_mem_bytes",
    "deployed_top1",  # test top-1 on the backend, where its benchmark measures it (OpenVINO)
    "agreement",  # share of test images whose class agrees with onnxruntime on the same file
    "integer_compute_layers",  # OpenVINO: compute layers (Conv, MatMul, FullyConnected) that run in integers
    "compute_layers",
    *PROVENANCE_COLUMNS,
]


def _variant_dir(path: str | Path) -> Path:
    return Path(path).parent


def accuracy_table(metrics_files: list[str], onnx_files: list[str]) -> pd.DataFrame:
    """One row per model x method x bits x seed; ONNX columns where the variant was exported."""
    deployed = {_variant_dir(f): read_json(f) for f in onnx_files}
    rows = []
    for f in metrics_files:
        m = read_json(f)
        d = deployed.get(_variant_dir(f), {})
        rows.append(
            {
                **{k: m.get(k) for k in ACCURACY_COLUMNS},
                "top1": m["test_top1"],
                "onnx_top1": d.get("onnx_top1"),
                "onnx_bytes": d.get("onnx_bytes"),
                "quant": quant_options_text(m.get("quant")),
                "objective": options_text(m.get("objective")),
                **provenance_columns(m),
            }
        )
    frame = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    # nullable integers: a float column would be written in write_csv's 6 significant digits
    frame["onnx_bytes"] = frame.onnx_bytes.astype("Int64")
    frame["qat_seed"] = frame.qat_seed.astype("Int64")  # none for FP32 rows
    return frame.sort_values(
        ["family", "model", "method", "w_bits", "seed", "qat_seed"],
        ascending=[True, True, True, False, True, True],
        ignore_index=True,
    )


def quant_options_text(quant: dict | None) -> str | None:
    """A quantized run's quant options other than its bit pair, as sorted JSON (the accuracy table's quant column,
    so that a model quantized with its own options, `models.<name>.quant`, says so); None for an FP32 run."""
    return None if quant is None else options_text({k: v for k, v in quant.items() if k not in ("w_bits", "a_bits")})


def options_text(options: dict | None) -> str | None:
    """Options as sorted JSON (the accuracy table's quant and objective columns); None where a run has none (the
    objective of a QAT run: distillation, regularizer and oscillation settings, `models.<name>.oscillation`
    included)."""
    return None if options is None else json.dumps(options, sort_keys=True)


def option_differences_text(accuracy: pd.DataFrame, column: str) -> str:
    """The options in `column` (quant, objective) whose values differ between models, with each model's value
    ("–": not set or null), e.g. "depthwise_input_bits: mobilenet 8, resnet –"; empty where every model is alike."""
    options = {
        model: json.loads(group[column].iloc[0])
        for model, group in accuracy.dropna(subset=[column]).groupby("model", sort=True)
    }
    keys = sorted({key for values in options.values() for key in values})
    differing = [k for k in keys if len({json.dumps(values.get(k)) for values in options.values()}) > 1]
    return "; ".join(
        f"{key}: "
        + ", ".join(f"{model} {'–' if values.get(key) is None else values[key]}" for model, values in options.items())
        for key in differing
    )


def bench_table(bench_files: list[str]) -> pd.DataFrame:
    """One row per model x deployed variant x backend x precision x batch size x seed. TensorRT rows name their
    engine's precision (fp32, fp16, int8+fp16, ...); onnxruntime runs a float model in FP32 and a Q/DQ model's
    fused layers in INT8."""
    rows = []
    for f in bench_files:
        b = read_json(f)
        cpu_precision = "fp32" if b["method"] == "fp32" else "int8"
        rows += [
            {**{k: b[k] for k in BENCH_RUN_FIELDS}, "precision": cpu_precision, **row, **provenance_columns(b)}
            for row in b["rows"]
        ]
    frame = pd.DataFrame(rows, columns=BENCH_COLUMNS)
    return frame.sort_values(
        ["family", "model", "method", "w_bits", "backend", "precision", "batch"],
        ascending=[True, True, True, False, True, True, True],
        ignore_index=True,
    )


def oscillation_table(metrics_files: list[str]) -> pd.DataFrame:
    """Per QAT run, epoch and quantized layer: the share of oscillating and of frozen weights.

    Layer "(all)" is the weight-count-weighted share over the whole model.
    """
    rows = []
    for f in metrics_files:
        m = read_json(f)
        if m["method"] != "qat":
            continue
        key = {k: m.get(k) for k in ("model", "family", "w_bits", "a_bits", "seed", "qat_seed")}
        run = provenance_columns(m)
        for h in m.get("history", []):
            if "oscillating_share" not in h:
                continue
            rows.append(
                {
                    **key,
                    "epoch": h["epoch"],
                    "layer": "(all)",
                    "oscillating_share": h["oscillating_share"],
                    "integer_flip_share": h.get("integer_flip_share"),
                    "frozen_share": h["frozen_share"],
                    **run,
                }
            )
            rows += [
                {
                    **key,
                    "epoch": h["epoch"],
                    "layer": name,
                    "oscillating_share": layer["oscillating"],
                    "integer_flip_share": layer.get("integer_flips"),
                    "frozen_share": layer["frozen"],
                    **run,
                }
                for name, layer in h["layers"].items()
            ]
    columns = [
        "model",
        "family",
        "w_bits",
        "a_bits",
        "seed",
        "qat_seed",
        "epoch",
        "layer",
        "oscillating_share",
        "integer_flip_share",
        "frozen_share",
        *PROVENANCE_COLUMNS,
    ]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(
        ["family", "model", "w_bits", "seed", "qat_seed", "epoch"],
        ascending=[True, True, False, True, True, True],
        kind="stable",
        ignore_index=True,
    )


def _number(value: float, fmt: str) -> str:
    return "–" if pd.isna(value) else f"{value:{fmt}}"


def model_summary_table(accuracy: pd.DataFrame, qat_bits: int) -> Table:
    """The classic table: parameters, FP32 and QAT top-1, FP32 and quantized size, per model."""
    tag = bits_heading(qat_bits, qat_bits)
    table = Table(
        title=f"Models: FP32 against {tag} QAT",
        columns=[
            "Model",
            "Family",
            "Parameters",
            "FP32 top-1 (%)",
            f"{tag} QAT top-1 (%)",
            f"{tag} QAT ONNX top-1 (%)",
            "FP32 size (MB)",
            f"W{qat_bits} packed size (MB)",
            f"{tag} ONNX file (MB)",
            "Size reduction (%)",
        ],
        align="llrrrrrrrr",
        note="Top-1 on the full test split; mean ± 95% t-interval half-width over FP32 seeds (n), each FP32 seed's "
        "QAT seeds averaged first. Packed size: "
        "weights at the quantized bit-width plus FP32 scales, biases and norms; the ONNX file stores "
        "weights as int8 containers. Size reduction: packed size against FP32 size.",
    )
    for (family, model), group in accuracy.groupby(["family", "model"], sort=True):
        fp32 = group[group.method == "fp32"]
        q = group[(group.method == "qat") & (group.w_bits == qat_bits)]
        fp32_mb = fp32.fp32_bytes.mean() / 1e6 if not fp32.empty else float("nan")
        packed_mb = q.packed_bytes.mean() / 1e6 if not q.empty else float("nan")
        reduction = 100.0 * (1 - packed_mb / fp32_mb)  # NaN where either size is missing
        table.rows.append(
            [
                model,
                family,
                f"{int(group.params.iloc[0]):,}",
                mean_ci_text(fp32.top1, ".2f"),
                mean_ci_text(per_fp32_seed(q, "top1"), ".2f"),
                mean_ci_text(per_fp32_seed(q, "onnx_top1"), ".2f"),
                _number(fp32_mb, ".3f"),
                _number(packed_mb, ".3f"),
                mean_ci_text(per_fp32_seed(q, "onnx_bytes") / 1e6, ".3f"),
                _number(reduction, ".1f"),
            ]
        )
    return table


def top1_by_bits_table(accuracy: pd.DataFrame) -> Table:
    """Test top-1 per model and method (PTQ, QAT), one column per weight/activation bit-width."""
    pairs = sorted({(int(w), int(a)) for w, a in zip(accuracy.w_bits, accuracy.a_bits)}, reverse=True)
    table = Table(
        title="Test top-1 (%) by weight/activation bits, PTQ and QAT",
        columns=["Model", "Family", "Method"] + [bits_heading(w, a) for w, a in pairs],
        align="lll" + "r" * len(pairs),
        note="Full test split, PyTorch; mean ± 95% t-interval half-width over FP32 seeds (n), each FP32 "
        "seed's QAT seeds averaged first. The FP32 "
        "column is the model both methods start from.",
    )
    for column, what in (("quant", "Quant options"), ("objective", "QAT objective options")):
        differences = option_differences_text(accuracy, column)
        if differences:
            table.note += f" {what} that differ between models (accuracy.csv, {column} column): {differences}."
    fp32 = accuracy[accuracy.method == "fp32"]
    quantized = accuracy[accuracy.method != "fp32"]
    for (family, model, method), group in quantized.groupby(["family", "model", "method"], sort=True):
        reference = fp32[fp32.model == model]
        cells = [
            mean_ci_text(
                per_fp32_seed(reference if w >= 32 else group[(group.w_bits == w) & (group.a_bits == a)], "top1"), ".2f"
            )
            for w, a in pairs
        ]
        table.rows.append([model, family, method.upper()] + cells)
    return table


def deployment_table(bench: pd.DataFrame) -> Table:
    """Benchmark results per model, deployed variant, backend, precision and batch size."""
    table = Table(
        title="Deployed models: latency, throughput, size and memory",
        columns=[
            "Model",
            "Variant",
            "Backend",
            "Precision",
            "Batch",
            "Latency p50 (ms)",
            "Latency p99 (ms)",
            "Throughput (img/s)",
            "Model file (MB)",
            "Peak memory (MB)",
        ],
        align="llllrrrrrr",
        note="Mean ± 95% t-interval half-width over seeds (n) where there are several. Precision: what the "
        "backend computes in (TensorRT: the engine's). Peak memory: resident memory above the "
        "process's memory before the model was loaded (TensorRT: the engine and its execution context "
        "on the device).",
    )
    keys = ["family", "model", "method", "w_bits", "a_bits", "backend", "precision", "batch"]
    ordered = bench.assign(neg_bits=-bench.w_bits).sort_values(
        ["family", "model", "method", "neg_bits", "backend", "precision", "batch"]
    )
    for (_, model, method, w, a, backend, precision, batch), group in ordered.groupby(keys, sort=False):
        variant = bits_heading(w, a) if method == "fp32" else f"{method.upper()} {bits_heading(w, a)}"
        table.rows.append(
            [
                model,
                variant,
                backend,
                precision,
                str(batch),
                mean_ci_text(group.latency_ms_p50, ".3f"),
                mean_ci_text(group.latency_ms_p99, ".3f"),
                mean_ci_text(group.throughput_ips, ".0f"),
                mean_ci_text(group.model_bytes / 1e6, ".3f"),
                mean_ci_text(group.peak_mem_bytes / 1e6, ".1f"),
            ]
        )
    return table


def summary_tables(accuracy: pd.DataFrame, bench: pd.DataFrame, qat_bits: int) -> dict[str, Table]:
    """The study's tables by file stem: results/tables/<stem>.tex, and together in summary.md."""
    return {
        "models": model_summary_table(accuracy, qat_bits),
        "top1_by_bits": top1_by_bits_table(accuracy),
        "deployment": deployment_table(bench),
    }


def summary_markdown(accuracy: pd.DataFrame, bench: pd.DataFrame, qat_bits: int) -> str:
    """Every summary table in Markdown; the deployment table only where something was benchmarked."""
    tables = summary_tables(accuracy, bench, qat_bits)
    if bench.empty:
        del tables["deployment"]
    return "\n".join(markdown_table(table) for table in tables.values())
