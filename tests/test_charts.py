"""The study's figures, drawn from small tidy CSVs in tests/fixtures/ (synthetic numbers shaped like the
default study: two CNNs and two ViTs, FP32 and 8/6/4/3/2 bits, two seeds, batches 1 and 64; bench.csv also has
TensorRT rows, the FP32 models in FP32 and FP16 engines)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qatstudy import charts

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
BATCH = 64
FAMILY_OF = {"resnet": "cnn", "mobilenet": "cnn", "vit": "vit", "swin": "vit"}


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(FIXTURES / f"{name}.csv") for name in ("accuracy", "bench", "oscillation", "sensitivity")}


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


def _main_encoding(spec: dict, channel: str) -> dict:
    """The encoding block that maps `channel` (the marks, not the whiskers or labels)."""
    blocks = [e for e in _encodings(spec) if channel in e]
    assert blocks, (channel, _encodings(spec))
    return blocks[0]


def _data(spec: dict) -> pd.DataFrame:
    datasets = spec["datasets"]
    assert len(datasets) == 1
    return pd.DataFrame(next(iter(datasets.values())))


def _seed_stats(frame: pd.DataFrame, mask: pd.Series, column: str) -> tuple[float, float]:
    """Mean over the fixtures' two FP32 seeds and the half-width of its 95% t-interval, t(1) s / sqrt(2)."""
    values = frame.loc[mask, column]
    assert len(values) == 2  # the fixtures hold two seeds
    return values.mean(), 12.706 * values.std(ddof=1) / np.sqrt(2)


# ---------------------------------------------------------------------------------------------
# shared pieces


def test_pareto_front_hand_made():
    # (latency, accuracy): b dominates c; d beats everything on accuracy; e ties b exactly (neither dominates
    # the other); f is as accurate as d but slower, so d dominates it; a is the fastest.
    latency = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0]
    accuracy = [50.0, 60.0, 55.0, 80.0, 60.0, 80.0]
    assert charts.pareto_front(latency, accuracy).tolist() == [True, True, False, True, True, False]
    assert charts.pareto_front([3.0], [10.0]).tolist() == [True]
    # the frontier runs from fastest to most accurate: accuracy rises with latency along it
    rng = np.random.default_rng(0)
    cost, value = rng.uniform(1, 10, 50), rng.uniform(0, 100, 50)
    front = charts.pareto_front(cost, value)
    order = np.argsort(cost[front])
    assert np.all(np.diff(value[front][order]) > 0)
    for i in np.flatnonzero(~front):  # every other point has a frontier point at least as good
        assert np.any((cost[front] <= cost[i]) & (value[front] >= value[i]))


def test_mean_interval_averages_qat_seeds_within_their_fp32_seed_first():
    frame = pd.DataFrame({"model": ["a", "a", "a", "b"], "seed": [0, 0, 1, 0], "top1": [89.0, 91.0, 92.0, 80.0]})
    out = charts.mean_interval(frame, ["model"], ["top1"]).set_index("model")
    # a: FP32 seeds 90 (two QAT seeds) and 92, so mean 91 and half-width t(1) * sqrt(2) / sqrt(2)
    assert out.loc["a", "top1"] == 91.0 and out.loc["a", "top1_ci"] == pytest.approx(12.706)
    assert out.loc["b", "top1_ci"] == 0.0 and out.seeds.tolist() == [2, 1]


def test_model_palette_keeps_family_hues(tables):
    palette = charts.model_palette(tables["accuracy"])
    assert palette.domain == ["mobilenet (CNN)", "resnet (CNN)", "swin (ViT)", "vit (ViT)"]
    for label, color in zip(palette.domain, palette.range):
        family = "cnn" if "(CNN)" in label else "vit"
        assert color in charts.FAMILY_SHADES[family]
    assert len(set(palette.range)) == len(palette.range)
    family = charts.family_palette()
    assert family.domain == ["CNN", "ViT"] and family.range == [
        charts.FAMILY_COLORS["cnn"],
        charts.FAMILY_COLORS["vit"],
    ]


def test_every_figure_has_a_caption_naming_its_tables():
    for name, table_names in charts.FIGURE_TABLES.items():
        rst = (REPO / "report" / "figures" / f"{name}.rst").read_text()
        assert f"results/tables/{table_names[0]}.csv" in rst, name
        assert "{{" not in rst and "{%" not in rst  # captions are rendered as Jinja templates by the report
        markdown = charts.caption_markdown(rst)
        assert "``" not in markdown and f"`results/tables/{table_names[0]}.csv`" in markdown


def test_merged_order():
    cnn = ["stem", "stage1", "stage2", "head", "all"]
    vit = ["stem", "qkv", "fc1", "head", "all"]
    swin = ["stem", "qkv", "fc1", "patch_merging", "head", "all"]
    assert charts.merged_order([cnn, vit, swin]) == [
        "stem",
        "stage1",
        "stage2",
        "qkv",
        "fc1",
        "patch_merging",
        "head",
        "all",
    ]
    assert charts.merged_order([["a", "b"], ["b", "a"]]) == ["a", "b"]  # conflicting orders: first seen
    assert charts.merged_order([]) == []


def test_bits_label():
    assert charts.bits_label(32, 32) == "FP32"
    assert charts.bits_label(4, 4) == "4-bit"
    assert charts.bits_label(4, 8) == "W4A8"


# ---------------------------------------------------------------------------------------------
# the figures' specs: encodings, fields and the numbers they plot


def test_accuracy_by_bits_spec(tables):
    acc = tables["accuracy"]
    spec = charts.figure("accuracy_by_bits", tables, BATCH).to_dict()
    assert spec["facet"]["column"]["field"] == "method"
    bars = _main_encoding(spec, "color")
    assert bars["x"]["field"] == "bits" and bars["y"]["field"] == "top1" and bars["xOffset"]["field"] == "label"
    assert bars["x"]["sort"] == ["FP32", "8-bit", "6-bit", "4-bit", "3-bit", "2-bit"]
    assert bars["color"]["field"] == "label"
    assert bars["color"]["scale"]["domain"] == charts.model_palette(acc).domain  # CNNs first, then ViTs
    whiskers = [e for e in _encodings(spec) if "y2" in e]
    assert whiskers and whiskers[0]["y"]["field"] == "low" and whiskers[0]["y2"]["field"] == "high"
    data = _data(spec)
    assert set(data.method) == {"PTQ", "QAT"} and set(data.seeds) == {2}
    n_models, n_bits = acc.model.nunique(), acc[acc.method == "qat"].w_bits.nunique()
    assert len(data) == 2 * n_models * (1 + n_bits)  # FP32 opens both panels
    row = data[(data.method == "PTQ") & (data.bits == "4-bit") & (data.model == "resnet")].iloc[0]
    mean, half = _seed_stats(acc, (acc.model == "resnet") & (acc.method == "ptq") & (acc.w_bits == 4), "top1")
    assert row.top1 == pytest.approx(mean) and row.top1_ci == pytest.approx(half)
    fp32 = data[(data.bits == "FP32") & (data.model == "vit")]
    assert set(fp32.method) == {"PTQ", "QAT"} and fp32.top1.nunique() == 1


def test_accuracy_vs_latency_spec(tables):
    acc, bench = tables["accuracy"], tables["bench"]
    spec = charts.figure("accuracy_vs_latency", tables, BATCH).to_dict()
    assert spec["facet"]["column"]["field"] == "backend"
    bubbles = _main_encoding(spec, "size")
    assert bubbles["x"]["field"] == "latency_ms_p50" and bubbles["x"]["scale"]["type"] == "log"
    assert bubbles["y"]["field"] == "deployed_top1"
    assert bubbles["size"]["field"] == "peak_mem_mb" and bubbles["color"]["field"] == "label"
    assert bubbles["shape"]["field"] == "bits"
    assert bubbles["color"]["scale"]["range"] == charts.model_palette(acc).range  # each model its own shade
    assert not [layer for layer in spec["spec"]["layer"] if layer["mark"]["type"] == "text"]  # nothing to overlap
    lines = [layer for layer in spec["spec"]["layer"] if layer["mark"]["type"] == "line"]
    assert len(lines) == 1 and lines[0]["transform"] == [{"filter": "datum.pareto"}]
    data = _data(spec)
    deployed = bench[bench.batch == BATCH]
    assert len(data) == len(deployed.drop_duplicates(["backend", "precision", "model", "method", "w_bits"]))
    half = data[(data.model == "vit") & (data.bits == "FP16")]
    assert len(half) == 1 and half.backend.item() == "tensorrt"  # the FP32 model's FP16 engine, beside its FP32 one
    fp32_runs = (acc.model == "vit") & (acc.method == "fp32")
    assert half.deployed_top1.item() == pytest.approx(_seed_stats(acc, fp32_runs, "onnx_top1")[0])
    assert bubbles["shape"]["sort"][:3] == ["FP32", "FP16", "8-bit"]
    row = data[(data.backend == "onnxruntime-cpu") & (data.model == "swin") & (data.bits == "4-bit")].iloc[0]
    runs = (acc.model == "swin") & (acc.method == "qat") & (acc.w_bits == 4)
    assert row.deployed_top1 == pytest.approx(_seed_stats(acc, runs, "onnx_top1")[0])
    latency = (
        (deployed.backend == "onnxruntime-cpu")
        & (deployed.model == "swin")
        & (deployed.method == "qat")
        & (deployed.w_bits == 4)
    )
    assert row.latency_ms_p50 == pytest.approx(_seed_stats(deployed, latency, "latency_ms_p50")[0])
    assert row.peak_mem_mb == pytest.approx(_seed_stats(deployed, latency, "peak_mem_bytes")[0] / 1e6)
    for _, group in data.groupby("backend"):
        assert group.pareto.tolist() == charts.pareto_front(group.latency_ms_p50, group.deployed_top1).tolist()
    assert data.pareto.any() and not data.pareto.all()


def test_accuracy_vs_latency_uses_pytorch_top1_where_not_exported(tables):
    acc = tables["accuracy"].copy()
    not_exported = (acc.model == "resnet") & (acc.method == "qat") & (acc.w_bits == 8)
    acc.loc[not_exported, "onnx_top1"] = np.nan
    points = charts.deployed_points(acc, tables["bench"], BATCH)
    row = points[(points.model == "resnet") & (points.bits == "8-bit")].iloc[0]
    assert row.deployed_top1 == pytest.approx(acc[not_exported].top1.mean())


def test_accuracy_vs_latency_batch_not_benchmarked(tables):
    with pytest.raises(ValueError, match="no rows at batch 8"):
        charts.figure("accuracy_vs_latency", tables, 8)


def test_size_reduction_spec(tables):
    acc = tables["accuracy"]
    spec = charts.figure("size_reduction", tables, BATCH).to_dict()
    assert spec["facet"]["column"]["field"] == "storage"
    lines = _main_encoding(spec, "color")
    assert lines["x"]["field"] == "bits" and lines["y"]["field"] == "reduction"
    assert lines["color"]["field"] == "label" and lines["strokeDash"]["field"] == "line"
    assert lines["color"]["scale"]["domain"][-1] == "Ideal 32/b" and lines["color"]["scale"]["range"][-1] == "black"
    data = _data(spec)
    ideal = data[data.line == "ideal"]
    assert (ideal.reduction == 32.0 / ideal.w_bits).all() and set(ideal.w_bits) == {8, 6, 4, 3, 2}
    qat = acc[(acc.method == "qat") & (acc.model == "vit") & (acc.w_bits == 2)].iloc[0]
    packed = data[(data.label == "vit (ViT)") & (data.w_bits == 2) & data.storage.str.startswith("Packed")]
    onnx = data[(data.label == "vit (ViT)") & (data.w_bits == 2) & data.storage.str.startswith("ONNX")]
    assert packed.reduction.item() == pytest.approx(qat.fp32_bytes / qat.packed_bytes)
    assert onnx.reduction.item() == pytest.approx(qat.fp32_bytes / qat.onnx_bytes)
    assert (packed.reduction.item() < 16) and (onnx.reduction.item() < 4)  # below the ideal and int8's 4x


def test_oscillation_spec(tables):
    osc = tables["oscillation"]
    spec = charts.figure("oscillation", tables, BATCH).to_dict()
    assert spec["facet"]["column"]["field"] == "bits"
    lines = _main_encoding(spec, "color")
    assert lines["x"]["field"] == "epoch" and lines["y"]["field"] == "share_pct" and lines["color"]["field"] == "label"
    assert lines["color"]["scale"]["domain"] == charts.model_palette(tables["accuracy"]).domain
    data = _data(spec)
    assert set(data.measure) == {"oscillating"}  # nothing was frozen in the fixture
    overall = osc[osc.layer == "(all)"]
    assert len(data) == len(overall.drop_duplicates(["model", "w_bits", "epoch"]))
    row = data[(data.label == "resnet (CNN)") & (data.w_bits == 3) & (data.epoch == 2)].iloc[0]
    runs = (overall.model == "resnet") & (overall.w_bits == 3) & (overall.epoch == 2)
    assert row.share_pct == pytest.approx(100 * _seed_stats(overall, runs, "oscillating_share")[0])


def test_oscillation_draws_frozen_share_when_something_froze(tables):
    osc = tables["oscillation"].assign(frozen_share=0.01)
    data = _data(charts.oscillation_by_epoch(osc).to_dict())
    assert set(data.measure) == {"oscillating", "frozen"}
    assert data[data.measure == "frozen"].share_pct.eq(1.0).all()


def test_sensitivity_heatmap_spec(tables):
    sens = tables["sensitivity"]
    spec = charts.figure("sensitivity", tables, BATCH).to_dict()
    assert spec["facet"]["column"]["field"] == "bits"
    cells = _main_encoding(spec, "tooltip")
    assert cells["x"]["field"] == "label" and cells["y"]["field"] == "group" and cells["color"]["field"] == "drop"
    # data-flow order merged across models (CNN stages, then the transformer roles), the whole model last
    assert cells["y"]["sort"] == [
        "stem",
        "stage1",
        "stage2",
        "stage3",
        "stage4",
        "qkv",
        "attention_map",
        "attn_proj",
        "fc1",
        "fc2",
        "patch_merging",
        "head",
        "all",
    ]
    assert cells["color"]["scale"]["clamp"] is True
    single = sens[sens.group != "all"].groupby(["model", "group", "w_bits"])["drop"].mean()
    assert cells["color"]["scale"]["domain"] == pytest.approx([-single.max(), single.max()])  # "all" saturates
    assert cells["x"]["sort"] == ["mobilenet (CNN)", "resnet (CNN)", "swin (ViT)", "vit (ViT)"]
    data = _data(spec)
    assert len(data) == len(sens.drop_duplicates(["model", "group", "w_bits"]))
    row = data[(data.model == "vit") & (data.group == "attention_map") & (data.w_bits == 2)].iloc[0]
    runs = (sens.model == "vit") & (sens.group == "attention_map") & (sens.w_bits == 2)
    assert row["drop"] == pytest.approx(_seed_stats(sens, runs, "drop")[0])


def test_onnx_vs_pytorch_spec(tables):
    acc = tables["accuracy"]
    spec = charts.figure("onnx_vs_pytorch", tables, BATCH).to_dict()
    bars = _main_encoding(spec, "color")
    assert bars["x"]["field"] == "bits" and bars["y"]["field"] == "export_delta" and bars["xOffset"]["field"] == "label"
    data = _data(spec)
    exported = acc[acc.onnx_top1.notna()]
    assert len(data) == len(exported.drop_duplicates(["model", "w_bits"]))
    assert "PTQ" not in set(data.bits)
    row = data[(data.model == "mobilenet") & (data.bits == "2-bit")].iloc[0]
    runs = (exported.model == "mobilenet") & (exported.w_bits == 2)
    delta = exported.onnx_top1 - exported.top1
    assert row.export_delta == pytest.approx(delta[runs].mean())
    assert row.export_delta_ci == pytest.approx(12.706 * delta[runs].std(ddof=1) / np.sqrt(2))


def test_drop_by_bits_spec(tables):
    acc = tables["accuracy"]
    spec = charts.figure("drop_by_bits", tables, BATCH).to_dict()
    assert spec["facet"]["column"]["field"] == "method" and spec["resolve"]["scale"]["y"] == "independent"
    bars = _main_encoding(spec, "color")
    assert bars["y"]["field"] == "top1_drop" and bars["xOffset"]["field"] == "label"
    data = _data(spec)
    assert set(data.method) == {"QAT", "PTQ"} and "FP32" not in set(data.bits)
    row = data[(data.method == "QAT") & (data.bits == "2-bit") & (data.model == "vit")].iloc[0]
    fp32 = acc[(acc.model == "vit") & (acc.method == "fp32")].set_index("seed").top1
    qat = acc[(acc.model == "vit") & (acc.method == "qat") & (acc.w_bits == 2)].groupby("seed").top1.mean()
    drops = fp32 - qat  # each FP32 seed's drop from its own FP32 model
    assert row.top1_drop == pytest.approx(drops.mean())
    assert row.top1_drop_ci == pytest.approx(12.706 * drops.std(ddof=1) / np.sqrt(2))


# ---------------------------------------------------------------------------------------------
# rendering


def _png_size_and_ppi(png: bytes) -> tuple[int, int, float]:
    width, height = struct.unpack(">II", png[16:24])
    phys = png.index(b"pHYs")
    ppm_x, _, unit = struct.unpack(">IIB", png[phys + 4 : phys + 13])
    assert unit == 1  # pixels per metre
    return width, height, ppm_x * 0.0254


@pytest.mark.parametrize("name", list(charts.FIGURE_TABLES))
def test_save_figure_png_svg_html(tables, tmp_path, name):
    stem = tmp_path / "figures" / name
    written = charts.save_chart(charts.figure(name, tables, BATCH), stem)
    assert sorted(p.suffix for p in written) == [".html", ".png", ".svg"]
    assert all(p.parent == stem.parent and p.stem == name for p in written)
    png = stem.with_suffix(".png").read_bytes()
    svg = stem.with_suffix(".svg").read_text()
    html = stem.with_suffix(".html").read_text()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # print resolution: 300 pixels per inch, the SVG's layout at 72 per inch
    width, _, ppi = _png_size_and_ppi(png)
    svg_width = float(re.search(r'<svg[^>]*\swidth="([\d.]+)"', svg).group(1))
    assert ppi == pytest.approx(charts.PRINT_PPI, rel=1e-3)
    assert width == pytest.approx(svg_width * charts.PRINT_PPI / 72, abs=3)
    # self-contained HTML: the spec and its data inline, no script fetched from elsewhere
    assert "vegaEmbed" in html or "vega-embed" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    assert [n for n in (tmp_path / "figures").iterdir() if n.name.endswith(".tmp")] == []
