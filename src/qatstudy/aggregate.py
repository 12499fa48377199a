"""Tidy result tables from the per-run JSON files, and the classic per-model summary table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import atomic_path, read_json

ACCURACY_COLUMNS = ["model", "family", "arch", "method", "w_bits", "a_bits", "seed", "top1", "val_top1",
                    "onnx_top1", "params", "fp32_bytes", "packed_bytes", "onnx_bytes"]
BENCH_COLUMNS = ["model", "family", "method", "w_bits", "a_bits", "seed", "backend", "batch", "threads",
                 "latency_ms_p50", "latency_ms_p99", "latency_ms_mean", "throughput_ips", "model_bytes",
                 "peak_mem_bytes"]


def _variant_dir(path: str | Path) -> Path:
    return Path(path).parent


def accuracy_table(metrics_files: list[str], onnx_files: list[str]) -> pd.DataFrame:
    """One row per model x method x bits x seed; ONNX columns where the variant was exported."""
    deployed = {_variant_dir(f): read_json(f) for f in onnx_files}
    rows = []
    for f in metrics_files:
        m = read_json(f)
        d = deployed.get(_variant_dir(f), {})
        rows.append({**{k: m.get(k) for k in ACCURACY_COLUMNS}, "top1": m["test_top1"],
                     "onnx_top1": d.get("onnx_top1"), "onnx_bytes": d.get("onnx_bytes")})
    frame = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    return frame.sort_values(["family", "model", "method", "w_bits", "seed"], ascending=[True, True, True, False, True],
                             ignore_index=True)


def bench_table(bench_files: list[str]) -> pd.DataFrame:
    rows = []
    for f in bench_files:
        b = read_json(f)
        rows += [{**{k: b[k] for k in ("model", "family", "method", "w_bits", "a_bits", "seed")}, **row}
                 for row in b["rows"]]
    frame = pd.DataFrame(rows, columns=BENCH_COLUMNS)
    return frame.sort_values(["family", "model", "method", "w_bits", "batch"], ascending=[True, True, True, False, True],
                             ignore_index=True)


def oscillation_table(metrics_files: list[str]) -> pd.DataFrame:
    """Per QAT run, epoch and quantized layer: the share of oscillating and of frozen weights.

    Layer "(all)" is the weight-count-weighted share over the whole model.
    """
    rows = []
    for f in metrics_files:
        m = read_json(f)
        if m["method"] != "qat":
            continue
        key = {k: m[k] for k in ("model", "family", "w_bits", "a_bits", "seed")}
        for h in m.get("history", []):
            if "oscillating_share" not in h:
                continue
            rows.append({**key, "epoch": h["epoch"], "layer": "(all)", "oscillating_share": h["oscillating_share"],
                         "frozen_share": h["frozen_share"]})
            rows += [{**key, "epoch": h["epoch"], "layer": name, "oscillating_share": layer["oscillating"],
                      "frozen_share": layer["frozen"]} for name, layer in h["layers"].items()]
    columns = ["model", "family", "w_bits", "a_bits", "seed", "epoch", "layer", "oscillating_share", "frozen_share"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["family", "model", "w_bits", "seed", "epoch"], ascending=[True, True, False, True, True],
                             kind="stable", ignore_index=True)


def write_csv(frame: pd.DataFrame, dest: str | Path) -> None:
    with atomic_path(dest) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def _mean_std(values: pd.Series, fmt: str) -> str:
    if values.empty or values.isna().all():
        return "–"
    if len(values) > 1:
        return f"{values.mean():{fmt}} ± {values.std(ddof=1):{fmt}}"
    return f"{values.mean():{fmt}}"


def summary_markdown(accuracy: pd.DataFrame, bench: pd.DataFrame, qat_bits: int) -> str:
    """The classic table: parameters, FP32 and QAT top-1, FP32 and quantized size, per model."""
    lines = [f"| Model | Family | Parameters | FP32 top-1 (%) | W{qat_bits}A{qat_bits} QAT top-1 (%) | "
             f"W{qat_bits}A{qat_bits} QAT ONNX top-1 (%) | FP32 size (MB) | W{qat_bits} packed size (MB) | "
             f"W{qat_bits}A{qat_bits} ONNX file (MB) | Size reduction (%) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (family, model), group in accuracy.groupby(["family", "model"], sort=True):
        fp32 = group[group.method == "fp32"]
        q = group[(group.method == "qat") & (group.w_bits == qat_bits)]
        fp32_mb = fp32.fp32_bytes.mean() / 1e6 if not fp32.empty else float("nan")
        packed_mb = q.packed_bytes.mean() / 1e6 if not q.empty else float("nan")
        reduction = 100.0 * (1 - packed_mb / fp32_mb) if fp32_mb == fp32_mb and packed_mb == packed_mb else float("nan")
        lines.append(f"| {model} | {family} | {int(group.params.iloc[0]):,} | {_mean_std(fp32.top1, '.2f')} | "
                     f"{_mean_std(q.top1, '.2f')} | {_mean_std(q.onnx_top1.dropna(), '.2f')} | {fp32_mb:.3f} | "
                     f"{packed_mb:.3f} | {_mean_std(q.onnx_bytes.dropna() / 1e6, '.3f')} | {reduction:.1f} |")
    lines.append("")
    lines.append("Top-1 on the full test split; mean ± std over seeds where there are several. Packed size: "
                 "weights at the quantized bit-width plus FP32 scales, biases and norms; the ONNX file stores "
                 "weights as int8 containers.")
    if not bench.empty:
        largest = bench.batch.max()
        lines += ["", f"| Model | Variant | Backend | Batch | Latency p50 (ms) | Latency p99 (ms) | Throughput (img/s) |"
                      f" Model file (MB) | Peak memory (MB) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for _, r in bench[bench.batch.isin([1, largest])].iterrows():
            variant = "fp32" if r.method == "fp32" else f"{r.method} w{r.w_bits}a{r.a_bits}"
            lines.append(f"| {r.model} | {variant} | {r.backend} | {r.batch} | {r.latency_ms_p50:.3f} | "
                         f"{r.latency_ms_p99:.3f} | {r.throughput_ips:.0f} | {r.model_bytes / 1e6:.3f} | "
                         f"{r.peak_mem_bytes / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def write_text(text: str, dest: str | Path) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
