"""Result tables, the summary markdown, atomic writes and the charts, from hand-written run JSONs
laid out as the workflow writes them (runs/<model>/seed<seed>/<variant>/{metrics,onnx,bench_cpu}.json)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from qatstudy import aggregate, charts
from qatstudy.aggregate import accuracy_table, bench_table, summary_markdown, write_csv, write_text

MODELS = {"resnet_t": ("cnn", "resnet10t", 1_234_567, 4_938_268), "vit_t": ("vit", "vit_convstem_tiny", 200_000, 800_000)}
VARIANTS = {"fp32": ("fp32", 32, 32), "ptq_w4a4": ("ptq", 4, 4), "qat_w4a4": ("qat", 4, 4), "qat_w8a8": ("qat", 8, 8)}
DEPLOYED = ("fp32", "qat_w4a4", "qat_w8a8")
BASE_TOP1 = {"fp32": 90.0, "ptq_w4a4": 40.0, "qat_w4a4": 88.0, "qat_w8a8": 89.5}
BATCHES = (1, 64)
NOT_EXPORTED = ("vit_t", 1, "qat_w8a8")  # benchmarked but without an onnx.json


def top1(model: str, variant: str, seed: int) -> float:
    return BASE_TOP1[variant] - (5.0 if model == "vit_t" else 0.0) + 2.0 * seed


def packed(model: str, w_bits: int) -> int:
    fp32_bytes = MODELS[model][3]
    return fp32_bytes if w_bits == 32 else fp32_bytes * w_bits // 32 + 10_000


def onnx_bytes(model: str, w_bits: int) -> int:
    return MODELS[model][3] + 1000 if w_bits == 32 else MODELS[model][3] // 4 + 5000


def latency(model: str, w_bits: int, batch: int, seed: int) -> float:
    return (2.0 if model == "vit_t" else 1.0) * batch * (0.5 if w_bits < 32 else 1.0) + 0.1 * seed


def _write(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def make_runs(root: Path, seeds=(0, 1)) -> dict[str, list[str]]:
    files = {"metrics": [], "onnx": [], "bench": []}
    for model, (family, arch, params, fp32_bytes) in MODELS.items():
        for seed in seeds:
            for variant, (method, w, a) in VARIANTS.items():
                folder = root / "runs" / model / f"seed{seed}" / variant
                identity = {"model": model, "family": family, "arch": arch, "kwargs": {}, "method": method,
                            "w_bits": w, "a_bits": a, "seed": seed}
                metrics = {**identity, "input_shape": [1, 28, 28], "params": params,
                           "val_top1": top1(model, variant, seed) + 1, "test_top1": top1(model, variant, seed),
                           "fp32_bytes": fp32_bytes, "packed_bytes": packed(model, w)}
                if method == "ptq":
                    metrics.update(calibration="mse", calib_images=512, calib_time_s=1.5)
                else:
                    metrics.update(history=[{"epoch": 1, "train_loss": 0.5, "val_top1": 80.0, "epoch_time_s": 1.0,
                                             "images_per_s": 100.0}], best_epoch=1, train_time_s=1.0)
                files["metrics"].append(_write(folder / "metrics.json", metrics))
                if variant not in DEPLOYED:
                    continue
                if (model, seed, variant) != NOT_EXPORTED:
                    files["onnx"].append(_write(folder / "onnx.json", {
                        "onnx_top1": top1(model, variant, seed) - 0.5, "onnx_bytes": onnx_bytes(model, w), "opset": 17,
                        "max_abs_diff_vs_torch": 1e-3, "argmax_agreement_vs_torch": 1.0}))
                rows = [{"backend": "onnxruntime-cpu", "batch": b, "threads": 1, "iterations": 50,
                         "latency_ms_p50": latency(model, w, b, seed), "latency_ms_p99": 1.5 * latency(model, w, b, seed),
                         "latency_ms_mean": 1.1 * latency(model, w, b, seed),
                         "throughput_ips": b * 1000 / (1.1 * latency(model, w, b, seed)),
                         "model_bytes": onnx_bytes(model, w), "peak_mem_bytes": 3_000_000 + b * 1000}
                        for b in BATCHES]
                files["bench"].append(_write(folder / "bench_cpu.json", {**{k: identity[k] for k in (
                    "model", "family", "method", "w_bits", "a_bits", "seed")}, "rows": rows}))
    return files


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    files = make_runs(tmp_path_factory.mktemp("study"))
    shuffled = {k: random.Random(1).sample(v, len(v)) for k, v in files.items()}  # order must not matter
    return shuffled


@pytest.fixture(scope="module")
def tables(runs):
    return accuracy_table(runs["metrics"], runs["onnx"]), bench_table(runs["bench"])


# ---------------------------------------------------------------------------------------------
# 1. accuracy table


def test_accuracy_table_rows_and_onnx_columns(tables):
    acc, _ = tables
    required = ["model", "family", "method", "w_bits", "a_bits", "seed", "top1", "onnx_top1"]
    assert set(required) <= set(acc.columns)
    assert len(acc) == len(MODELS) * 2 * len(VARIANTS)
    assert not acc.duplicated(["model", "method", "w_bits", "a_bits", "seed"]).any()
    for r in acc.itertuples():
        variant = "fp32" if r.method == "fp32" else f"{r.method}_w{r.w_bits}a{r.a_bits}"
        assert r.family == MODELS[r.model][0] and r.arch == MODELS[r.model][1]
        assert r.top1 == top1(r.model, variant, r.seed)
        assert r.val_top1 == r.top1 + 1
        assert r.params == MODELS[r.model][2] and r.packed_bytes == packed(r.model, r.w_bits)
        exported = variant in DEPLOYED and (r.model, r.seed, variant) != NOT_EXPORTED
        if exported:
            assert r.onnx_top1 == top1(r.model, variant, r.seed) - 0.5
            assert r.onnx_bytes == onnx_bytes(r.model, r.w_bits)
        else:
            assert pd.isna(r.onnx_top1) and pd.isna(r.onnx_bytes)


def test_accuracy_table_sorted(tables):
    acc, _ = tables
    keys = list(zip(acc.family, acc.model, acc.method, -acc.w_bits, acc.seed))
    assert keys == sorted(keys)
    assert acc.index.tolist() == list(range(len(acc)))
    assert acc.iloc[0][["model", "method", "seed"]].tolist() == ["resnet_t", "fp32", 0]


def test_accuracy_table_without_onnx_files(runs):
    acc = accuracy_table(runs["metrics"], [])
    assert len(acc) == len(runs["metrics"]) and acc.onnx_top1.isna().all()


# ---------------------------------------------------------------------------------------------
# 2. bench table


def test_bench_table(tables, runs):
    _, b = tables
    required = ["model", "family", "method", "w_bits", "a_bits", "backend", "batch", "latency_ms_p50",
                "latency_ms_p99", "throughput_ips", "model_bytes", "peak_mem_bytes"]
    assert set(required) <= set(b.columns)
    assert len(b) == len(runs["bench"]) * len(BATCHES)
    assert sorted(set(b.batch)) == list(BATCHES)
    for r in b.itertuples():
        assert r.latency_ms_p50 == latency(r.model, r.w_bits, r.batch, r.seed)
        assert r.model_bytes == onnx_bytes(r.model, r.w_bits) and r.backend == "onnxruntime-cpu"
        assert r.family == MODELS[r.model][0]
    keys = list(zip(b.family, b.model, b.method, -b.w_bits, b.batch))
    assert keys == sorted(keys)


# ---------------------------------------------------------------------------------------------
# 3. summary markdown


def _table(text: str, first_header: str) -> list[dict[str, str]]:
    """Rows of the markdown table whose header starts with `first_header`, as header -> cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def _cell(row: dict[str, str], *must: str, exclude: tuple[str, ...] = ()) -> str:
    matches = [h for h in row if all(m in h for m in must) and not any(e in h for e in exclude)]
    assert len(matches) == 1, (must, list(row))
    return row[matches[0]]


def test_summary_markdown_two_seeds(tables):
    acc, b = tables
    text = summary_markdown(acc, b, qat_bits=4)
    rows = _table(text, "Model")
    assert [(r["Model"], r["Family"]) for r in rows] == [("resnet_t", "cnn"), ("vit_t", "vit")]
    resnet, vit = rows
    assert resnet["Parameters"] == "1,234,567" and vit["Parameters"] == "200,000"
    assert _cell(resnet, "FP32 top-1") == "91.00 ± 1.41"  # seeds 90 and 92
    assert _cell(resnet, "W4A4 QAT top-1", exclude=("ONNX",)) == "89.00 ± 1.41"
    assert _cell(resnet, "W4A4 QAT ONNX top-1") == "88.50 ± 1.41"
    assert _cell(vit, "W4A4 QAT top-1", exclude=("ONNX",)) == "84.00 ± 1.41"
    assert _cell(resnet, "FP32 size") == "4.938"
    assert _cell(resnet, "packed size") == f"{packed('resnet_t', 4) / 1e6:.3f}" == "0.627"
    assert _cell(resnet, "ONNX file") == f"{onnx_bytes('resnet_t', 4) / 1e6:.3f} ± 0.000"
    assert _cell(resnet, "reduction") == f"{100 * (1 - packed('resnet_t', 4) / 4_938_268):.1f}" == "87.3"
    assert _cell(vit, "reduction") == f"{100 * (1 - packed('vit_t', 4) / 800_000):.1f}"
    # the benchmark table: batch 1 and the largest batch for every deployed variant
    bench_rows = _table(text, "Model | Variant")
    assert len(bench_rows) == len(b[b.batch.isin([1, 64])])
    assert {r["Variant"] for r in bench_rows} == {"fp32", "qat w4a4", "qat w8a8"}
    one = next(r for r in bench_rows if r["Model"] == "vit_t" and r["Variant"] == "qat w4a4" and r["Batch"] == "64")
    assert _cell(one, "Latency p50") in {f"{latency('vit_t', 4, 64, s):.3f}" for s in (0, 1)}


def test_summary_markdown_other_bits_and_one_seed(tmp_path):
    files = make_runs(tmp_path, seeds=(0,))
    acc, b = accuracy_table(files["metrics"], files["onnx"]), bench_table(files["bench"])
    rows = _table(summary_markdown(acc, b, qat_bits=8), "Model")
    resnet = rows[0]
    assert _cell(resnet, "FP32 top-1") == "90.00"  # a single seed: no ± part
    assert _cell(resnet, "W8A8 QAT top-1", exclude=("ONNX",)) == "89.50"
    assert _cell(resnet, "packed size") == f"{packed('resnet_t', 8) / 1e6:.3f}"
    no_bench = summary_markdown(acc, b.iloc[0:0], qat_bits=8)
    assert "Latency" not in no_bench and "| resnet_t |" in no_bench


# ---------------------------------------------------------------------------------------------
# 4. atomic writes


def _leftovers(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(".")]


def test_write_csv_atomic(tables, tmp_path, monkeypatch):
    acc, _ = tables
    dest = tmp_path / "accuracy.csv"
    dest.write_text("old content\n")

    def broken_to_csv(self, path, *args, **kwargs):
        Path(path).write_text("model,family\npartial")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_csv", broken_to_csv)
        with pytest.raises(OSError, match="disk full"):
            write_csv(acc, dest)
    assert dest.read_text() == "old content\n"
    assert _leftovers(tmp_path) == []
    write_csv(acc, dest)
    back = pd.read_csv(dest)
    assert list(back.columns) == list(acc.columns) and len(back) == len(acc)
    assert back.top1.tolist() == acc.top1.tolist()
    assert _leftovers(tmp_path) == []


def test_write_text_atomic(tmp_path, monkeypatch):
    dest = tmp_path / "summary.md"
    dest.write_text("old summary\n")
    real = Path.write_text

    def broken_write_text(self, data, *args, **kwargs):
        real(self, data[:5])
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", broken_write_text)
        with pytest.raises(OSError, match="disk full"):
            write_text("new summary\n", dest)
    assert dest.read_text() == "old summary\n"
    assert _leftovers(tmp_path) == []
    write_text("new summary\n", dest)
    assert dest.read_text() == "new summary\n" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 5. charts


def _encodings(spec: dict) -> list[dict]:
    """Every encoding block of a (possibly faceted, layered) Vega-Lite spec."""
    found = []
    if isinstance(spec, dict):
        if isinstance(spec.get("encoding"), dict):
            found.append(spec["encoding"])
        for key in ("spec", "layer", "hconcat", "vconcat", "concat"):
            if key in spec:
                for sub in spec[key] if isinstance(spec[key], list) else [spec[key]]:
                    found += _encodings(sub)
    return found


def _data(spec: dict) -> pd.DataFrame:
    datasets = spec["datasets"]
    assert len(datasets) == 1
    return pd.DataFrame(next(iter(datasets.values())))


def test_accuracy_by_bits_spec(tables):
    acc, _ = tables
    spec = charts.accuracy_by_bits(acc).to_dict()
    assert spec["facet"]["column"]["field"] == "method"
    encodings = _encodings(spec)
    bars = [e for e in encodings if e.get("y", {}).get("aggregate") == "mean"]
    assert bars, encodings
    for e in bars:
        assert e["x"]["field"] == "bits" and e["y"]["field"] == "top1" and e["xOffset"]["field"] == "label"
        assert e["x"]["sort"][:3] == ["FP32", "8-bit", "4-bit"]
    data = _data(spec)
    assert set(data.method) == {"PTQ", "QAT"}
    fp32_rows = (acc.method == "fp32").sum()
    for method in ("PTQ", "QAT"):  # FP32 is the reference bar of both panels
        assert (data[data.method == method].bits == "FP32").sum() == fp32_rows
    assert len(data) == 2 * fp32_rows + (acc.method != "fp32").sum()
    assert set(data.label) == {"resnet_t (CNN)", "vit_t (VIT)"}
    ptq4 = data[(data.method == "PTQ") & (data.bits == "4-bit") & (data.model == "resnet_t")]
    assert sorted(ptq4.top1) == [top1("resnet_t", "ptq_w4a4", s) for s in (0, 1)]


def test_accuracy_vs_latency_spec(tables):
    acc, b = tables
    spec = charts.accuracy_vs_latency(acc, b, 64).to_dict()
    (e,) = _encodings(spec)
    assert e["x"]["field"] == "latency_ms_p50" and e["y"]["field"] == "deployed_top1"
    assert e["size"]["field"] == "model_mb" and e["color"]["field"] == "family"
    data = _data(spec)
    assert len(data) == len(b[b.batch == 64]) and set(data.batch) == {64}
    for r in data.itertuples():
        variant = "fp32" if r.method == "fp32" else f"{r.method}_w{r.w_bits}a{r.a_bits}"
        expected = top1(r.model, variant, r.seed) - (0.0 if (r.model, r.seed, variant) == NOT_EXPORTED else 0.5)
        assert r.deployed_top1 == expected  # ONNX top-1, or the PyTorch one where there is none
        assert r.model_mb == pytest.approx(onnx_bytes(r.model, r.w_bits) / 1e6)
        assert r.latency_ms_p50 == latency(r.model, r.w_bits, 64, r.seed)


def test_save_chart_png_svg_html(tables, tmp_path):
    """One save_chart call (rendering is slow)."""
    acc, b = tables
    stem = tmp_path / "figures" / "bubble"
    written = charts.save_chart(charts.accuracy_vs_latency(acc, b, 64), stem)
    assert sorted(p.suffix for p in written) == [".html", ".png", ".svg"]
    assert all(p.parent == stem.parent and p.stem == "bubble" for p in written)
    png = stem.with_suffix(".png").read_bytes()
    svg = stem.with_suffix(".svg").read_text()
    html = stem.with_suffix(".html").read_text()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in svg
    # the PNG is rendered at twice the SVG's size
    png_width = int.from_bytes(png[16:20], "big")
    svg_width = float(re.search(r'<svg[^>]*\swidth="([\d.]+)"', svg).group(1))
    assert abs(png_width - 2 * svg_width) <= 2
    # self-contained HTML: the spec and its data inline, no script fetched from elsewhere
    assert "latency_ms_p50" in html and "deployed_top1" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    assert "vegaEmbed" in html or "vega-embed" in html
    assert _leftovers(stem.parent) == []


def test_bits_label():
    assert charts.bits_label(32, 32) == "FP32"
    assert charts.bits_label(4, 4) == "4-bit"
    assert charts.bits_label(4, 8) == "W4A8"
    assert aggregate.ACCURACY_COLUMNS[0] == "model"


def test_oscillation_table_has_a_row_per_qat_epoch_and_layer(tmp_path):
    from qatstudy.aggregate import oscillation_table

    history = [{"epoch": e, "oscillating_share": 0.1 * e, "frozen_share": 0.0,
                "layers": {"conv1": {"oscillating": 0.2 * e, "frozen": 0.0}, "fc": {"oscillating": 0.0, "frozen": 0.0}}}
               for e in (1, 2)]
    files = []
    for method, hist in [("qat", history), ("fp32", [{"epoch": 1, "val_top1": 50.0}])]:
        path = tmp_path / method / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"model": "m", "family": "cnn", "method": method, "w_bits": 4, "a_bits": 4,
                                    "seed": 0, "history": hist}))
        files.append(str(path))
    table = oscillation_table(files)
    assert len(table) == 2 * 3  # (all) + two layers, per epoch; the FP32 run has none
    overall = table[table.layer == "(all)"]
    assert overall.oscillating_share.tolist() == pytest.approx([0.1, 0.2])
    assert table[(table.layer == "conv1") & (table.epoch == 2)].oscillating_share.item() == pytest.approx(0.4)
