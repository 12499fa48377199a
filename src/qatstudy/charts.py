"""The study's figures as Altair charts, built from the tidy CSVs only, saved as PNG, SVG and HTML.

Every chart takes the tidy tables (accuracy.csv, bench.csv, oscillation.csv, sensitivity.csv as data
frames), averages over seeds in pandas, and plots those means, so the data inside a chart's spec is
exactly what it shows. Families keep one hue in every figure: CNNs blue, ViTs red, each model a shade
of its family's hue (`model_palette`).
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from .findings import seed_drops
from .io import atomic_path
from .labels import bits_label
from .stats import mean_ci

FAMILY_NAMES = {"cnn": "CNN", "vit": "ViT"}
FAMILY_COLORS = {"cnn": "#1f77b4", "vit": "#d62728"}
# shades per family, so every model keeps its family's hue in every figure
FAMILY_SHADES = {
    "cnn": ["#1f77b4", "#6baed6", "#08519c", "#9ecae1", "#3182bd"],
    "vit": ["#d62728", "#fc9272", "#a50f15", "#fcbba1", "#ef3b2c"],
}
OTHER_COLOR = "#7f7f7f"
FORMATS = ("png", "svg", "html")
PRINT_PPI = 300  # PNG resolution; vl-convert lays charts out at 72 px per inch, so PNGs are 300/72 times larger
MODEL_KEYS = ["family", "model"]
RUN_KEYS = ["model", "family", "method", "w_bits", "a_bits", "seed"]


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def model_label(model: str, family: str) -> str:
    return f"{model} ({family_name(family)})"


def _precisions(frame: pd.DataFrame) -> list:
    return list(frame.precision) if "precision" in frame else [None] * len(frame)


def bits_order(frame: pd.DataFrame) -> list[str]:
    """Bit-width labels from widest (FP32, then FP16) to narrowest."""
    keys = {(int(w), int(a), p == "fp16") for w, a, p in zip(frame.w_bits, frame.a_bits, _precisions(frame))}
    ordered = sorted(keys, key=lambda k: (-k[0], -k[1], k[2]))
    return list(dict.fromkeys(bits_label(w, a, "fp16" if half else None) for w, a, half in ordered))


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the display columns every chart uses: model label, family name, bit-width label."""
    out = frame.copy()
    out["label"] = [model_label(m, f) for m, f in zip(out.model, out.family)]
    out["family_name"] = out.family.map(family_name)
    if "w_bits" in out:
        out["bits"] = [bits_label(w, a, p) for w, a, p in zip(out.w_bits, out.a_bits, _precisions(out))]
    return out


def model_palette(frame: pd.DataFrame) -> alt.Scale:
    """A colour per model label, shaded within its family's hue; build it once from accuracy.csv and pass it
    to every chart so a model has the same colour in every figure."""
    pairs = frame[MODEL_KEYS].drop_duplicates().sort_values(MODEL_KEYS)
    domain, colors = [], []
    for family, group in pairs.groupby("family", sort=True):
        shades = FAMILY_SHADES.get(family, [OTHER_COLOR])
        for i, model in enumerate(group.model):
            domain.append(model_label(model, family))
            colors.append(shades[i % len(shades)])
    return alt.Scale(domain=domain, range=colors)


def family_palette() -> alt.Scale:
    return alt.Scale(domain=[family_name(f) for f in FAMILY_COLORS], range=list(FAMILY_COLORS.values()))


def mean_interval(frame: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """Per group of `keys`: `<value>` the mean over FP32 seeds, `<value>_ci` the half-width of its 95% t-interval
    (0 for one seed), and `seeds`, how many FP32 seeds. Rows of one FP32 seed (its QAT seeds) are averaged first:
    they share that FP32 model, so only FP32 seeds are independent."""
    if "seed" in frame and "seed" not in keys:
        frame = frame.groupby(keys + ["seed"], sort=False, dropna=False)[values].mean().reset_index()
    grouped = frame.groupby(keys, sort=False, dropna=False)
    out = grouped[values].mean()
    half = grouped[values].agg(lambda column: mean_ci(column)[1]).fillna(0.0).add_suffix("_ci")
    return out.join(half).join(grouped.size().rename("seeds")).reset_index()


def pareto_front(cost: np.ndarray | pd.Series, value: np.ndarray | pd.Series) -> np.ndarray:
    """Which points no other point dominates (lower or equal cost and higher or equal value, one strictly)."""
    cost, value = np.asarray(cost, dtype=float), np.asarray(value, dtype=float)
    no_worse = (cost[None, :] <= cost[:, None]) & (value[None, :] >= value[:, None])
    better = (cost[None, :] < cost[:, None]) | (value[None, :] > value[:, None])
    return ~(no_worse & better).any(axis=1)  # row i: is some point j at least as good and better somewhere


def _grouped_bars(
    data: pd.DataFrame, field: str, y_title: str, palette: alt.Scale, tooltip: list, y_scale: alt.Scale = alt.Undefined
) -> list[alt.Chart]:
    """Layers of bars per bit-width, one per model side by side (CNNs then ViTs), the mean over FP32 seeds, with
    95% interval whiskers (zero length for one seed); the caller layers them over `data`."""
    base = alt.Chart().encode(
        x=alt.X(
            "bits:N", sort=bits_order(data), title="Bit-width (weights and activations)", axis=alt.Axis(labelAngle=0)
        ),
        xOffset=alt.XOffset("label:N", sort=palette.domain),
    )
    bars = base.mark_bar().encode(
        y=alt.Y(f"{field}:Q", title=y_title, scale=y_scale),
        color=alt.Color("label:N", sort=palette.domain, title="Model (family)", scale=palette),
        tooltip=tooltip,
    )
    whiskers = (
        base.mark_errorbar(ticks=True, color="black")
        .transform_calculate(
            low=f"datum.{field} - datum.{field}_ci",
            high=f"datum.{field} + datum.{field}_ci",
        )
        .encode(y=alt.Y("low:Q", title=y_title), y2="high:Q")
    )
    return [bars, whiskers]


def accuracy_by_bits(accuracy: pd.DataFrame, palette: alt.Scale | None = None) -> alt.FacetChart:
    """Top-1 per bit-width, PTQ and QAT panels, each model a bar; FP32 is the first group of both panels."""
    palette = model_palette(accuracy) if palette is None else palette
    fp32 = accuracy[accuracy.method == "fp32"]
    panels = [pd.concat([fp32.assign(method=m), accuracy[accuracy.method == m]]) for m in ("ptq", "qat")]
    runs = labelled(pd.concat(panels, ignore_index=True).assign(method=lambda f: f.method.str.upper()))
    data = mean_interval(runs, ["method", "family", "model", "label", "w_bits", "a_bits", "bits"], ["top1"])
    layers = _grouped_bars(
        data,
        "top1",
        "Test top-1 (%)",
        palette,
        [
            "label:N",
            "method:N",
            "bits:N",
            alt.Tooltip("top1:Q", format=".2f", title="top-1 mean"),
            alt.Tooltip("top1_ci:Q", format=".2f", title="95% CI ±"),
            "seeds:Q",
        ],
        alt.Scale(domain=[0, 100]),
    )
    return (
        alt.layer(*layers, data=data)
        .properties(width=380, height=280)
        .facet(
            column=alt.Column(
                "method:N", title=None, sort=["PTQ", "QAT"], header=alt.Header(labelFontSize=13, labelFontWeight="bold")
            )
        )
        .properties(title="Test top-1 by bit-width: CNNs and ViTs, post-training quantization vs QAT")
    )


def drop_by_bits(accuracy: pd.DataFrame, palette: alt.Scale | None = None) -> alt.FacetChart:
    """Top-1 drop from each FP32 seed's own FP32 model per bit-width (QAT seeds averaged within the FP32 seed),
    QAT and PTQ panels on their own scales, so that sub-point differences between models stay visible."""
    palette = model_palette(accuracy) if palette is None else palette
    drops = pd.concat([seed_drops(accuracy, m).assign(method=m.upper()) for m in ("qat", "ptq")], ignore_index=True)
    data = mean_interval(
        labelled(drops), ["method", "family", "model", "label", "w_bits", "a_bits", "bits"], ["top1_drop"]
    )
    layers = _grouped_bars(
        data,
        "top1_drop",
        "Top-1 drop from own FP32 model (points)",
        palette,
        [
            "label:N",
            "method:N",
            "bits:N",
            alt.Tooltip("top1_drop:Q", format=".2f", title="drop mean"),
            alt.Tooltip("top1_drop_ci:Q", format=".2f", title="95% CI ±"),
            "seeds:Q",
        ],
    )
    zero = alt.Chart().mark_rule(color="black").encode(y=alt.datum(0))
    return (
        alt.layer(*layers, zero, data=data)
        .properties(width=380, height=280)
        .facet(
            column=alt.Column(
                "method:N", title=None, sort=["QAT", "PTQ"], header=alt.Header(labelFontSize=13, labelFontWeight="bold")
            )
        )
        .resolve_scale(y="independent")
        .properties(title="Top-1 drop from each model's own FP32 model, mean over FP32 seeds with 95% intervals")
    )


def deployed_points(accuracy: pd.DataFrame, bench: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Per backend and deployed variant at one batch size: mean deployed top-1 (the backend's own where its
    benchmark measured it, else onnxruntime's, or PyTorch's where the model was not exported), latency,
    throughput, file size and peak memory, and whether the variant is on its backend's accuracy/latency Pareto
    frontier."""
    if not (bench.batch == batch).any():  # an empty figure would pass unnoticed
        raise ValueError(f"bench.csv has no rows at batch {batch} (batches: {sorted(set(bench.batch))})")
    runs = bench[bench.batch == batch].merge(accuracy[RUN_KEYS + ["top1", "onnx_top1"]], on=RUN_KEYS, how="inner")
    runs = labelled(
        runs.assign(
            deployed_top1=runs.get("deployed_top1", runs.onnx_top1).fillna(runs.onnx_top1).fillna(runs.top1),
            model_mb=runs.model_bytes / 1e6,
            peak_mem_mb=runs.peak_mem_bytes.clip(lower=0) / 1e6,
        )
    )
    points = mean_interval(
        runs,
        ["backend", "precision", "family", "family_name", "model", "label", "method", "w_bits", "a_bits", "bits"],
        ["deployed_top1", "latency_ms_p50", "throughput_ips", "model_mb", "peak_mem_mb"],
    )
    points["pareto"] = False
    for _, group in points.groupby("backend"):
        points.loc[group.index, "pareto"] = pareto_front(group.latency_ms_p50, group.deployed_top1)
    return points


def accuracy_vs_latency(
    accuracy: pd.DataFrame, bench: pd.DataFrame, batch: int, palette: alt.Scale | None = None
) -> alt.FacetChart:
    """Bubble chart per backend: deployed top-1 against latency, bubble area = peak memory, colour = model (in its
    family's hue), shape = bit-width, and the Pareto frontier (no variant both faster and more accurate) as a line.
    No text labels: variants of one model sit close together, and colour and shape already name each bubble."""
    palette = model_palette(accuracy) if palette is None else palette
    data = deployed_points(accuracy, bench, batch)
    base = alt.Chart().encode(
        x=alt.X(
            "latency_ms_p50:Q",
            title=f"Latency p50 per batch of {batch} (ms, log scale)",
            scale=alt.Scale(type="log", nice=False, padding=20),
        ),
        y=alt.Y("deployed_top1:Q", title="Deployed (ONNX) test top-1 (%)", scale=alt.Scale(zero=False, padding=12)),
    )
    frontier = (
        base.transform_filter("datum.pareto")
        .mark_line(color="#444444", strokeDash=[5, 3])
        .encode(order="latency_ms_p50:Q")
    )
    bubbles = base.mark_point(filled=True, opacity=0.8, stroke="black", strokeWidth=0.5).encode(
        size=alt.Size("peak_mem_mb:Q", title="Peak memory (MB)", scale=alt.Scale(zero=True, range=[0, 1200])),
        color=alt.Color("label:N", sort=palette.domain, title="Model (family)", scale=palette),
        shape=alt.Shape("bits:N", title="Bit-width", sort=bits_order(data)),
        tooltip=[
            "model:N",
            "bits:N",
            "backend:N",
            alt.Tooltip("deployed_top1:Q", format=".2f"),
            alt.Tooltip("latency_ms_p50:Q", format=".3f"),
            alt.Tooltip("throughput_ips:Q", format=".0f"),
            alt.Tooltip("peak_mem_mb:Q", format=".1f"),
            alt.Tooltip("model_mb:Q", format=".3f"),
            "pareto:N",
            "seeds:Q",
        ],
    )
    return (
        alt.layer(frontier, bubbles, data=data)
        .properties(width=520, height=360)
        .facet(column=alt.Column("backend:N", title=None))
        .resolve_scale(x="independent")  # backends' latencies differ by orders of magnitude
        .properties(title="Deployed accuracy against latency; dashed: Pareto frontier")
    )


def size_reduction(accuracy: pd.DataFrame, palette: alt.Scale | None = None) -> alt.FacetChart:
    """Size reduction factor (FP32 bytes / quantized bytes) per model and weight bit-width, for the packed
    b-bit weights and for the ONNX file, against the ideal 32/b."""
    palette = model_palette(accuracy) if palette is None else palette
    quantized = labelled(accuracy[accuracy.method == "qat"])
    quantized["bits"] = [bits_label(w, w) for w in quantized.w_bits]  # sizes depend on the weight bits only
    storages = {"packed_bytes": "Packed b-bit weights", "onnx_bytes": "ONNX file (int8 containers)"}
    long = quantized.melt(
        id_vars=["label", "w_bits", "bits", "seed", "fp32_bytes"],
        value_vars=list(storages),
        var_name="storage",
        value_name="bytes",
    ).dropna(subset=["bytes"])
    long["reduction"] = long.fp32_bytes / long.bytes
    long["storage"] = long.storage.map(storages)
    measured = mean_interval(long, ["storage", "label", "w_bits", "bits"], ["reduction"])
    ideal = measured[["storage", "w_bits", "bits"]].drop_duplicates().assign(label="Ideal 32/b", seeds=0)
    ideal["reduction"] = 32.0 / ideal.w_bits
    data = pd.concat(
        [measured.assign(line="measured"), ideal.assign(line="ideal", reduction_ci=0.0)], ignore_index=True
    )
    colors = alt.Scale(domain=palette.domain + ["Ideal 32/b"], range=palette.range + ["black"])
    lines = (
        alt.Chart()
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "bits:N",
                sort=list(dict.fromkeys(data.sort_values("w_bits", ascending=False).bits)),
                title="Weight bit-width",
                axis=alt.Axis(labelAngle=0),
            ),
            y=alt.Y("reduction:Q", title="Size reduction vs FP32 (×)", scale=alt.Scale(zero=True)),
            color=alt.Color("label:N", sort=colors.domain, title="Model (family)", scale=colors),
            strokeDash=alt.StrokeDash(
                "line:N", scale=alt.Scale(domain=["measured", "ideal"], range=[[1, 0], [6, 4]]), legend=None
            ),
            tooltip=["storage:N", "label:N", "bits:N", alt.Tooltip("reduction:Q", format=".2f")],
        )
    )
    return (
        lines.properties(data=data, width=300, height=260)
        .facet(
            column=alt.Column(
                "storage:N",
                title=None,
                sort=list(storages.values()),
                header=alt.Header(labelFontSize=12, labelFontWeight="bold"),
            )
        )
        .properties(title="Model size reduction by weight bit-width against the 32/b ideal (QAT models)")
    )


def oscillation_by_epoch(oscillation: pd.DataFrame, palette: alt.Scale | None = None) -> alt.FacetChart:
    """Share of oscillating weights (whole model, layer "(all)") per QAT epoch, a panel per bit-width; the
    share frozen is drawn dashed where oscillation freezing froze anything."""
    overall = labelled(oscillation[oscillation.layer == "(all)"])
    palette = model_palette(overall) if palette is None else palette
    measures = {"oscillating_share": "oscillating"}
    if overall.frozen_share.gt(0).any():
        measures["frozen_share"] = "frozen"
    long = overall.melt(
        id_vars=["label", "family", "model", "w_bits", "a_bits", "bits", "epoch", "seed"],
        value_vars=list(measures),
        var_name="measure",
        value_name="share",
    )
    long["share_pct"] = 100.0 * long.share
    long["measure"] = long.measure.map(measures)
    data = mean_interval(long, ["measure", "label", "w_bits", "a_bits", "bits", "epoch"], ["share_pct"])
    lines = (
        alt.Chart()
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:O", title="QAT epoch", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("share_pct:Q", title="Weights oscillating (%)"),
            color=alt.Color("label:N", sort=palette.domain, title="Model (family)", scale=palette),
            strokeDash=alt.StrokeDash(
                "measure:N",
                title="Share",
                sort=list(measures.values()),
                legend=None if len(measures) == 1 else alt.Legend(),
            ),
            tooltip=[
                "label:N",
                "bits:N",
                "epoch:O",
                "measure:N",
                alt.Tooltip("share_pct:Q", format=".3f"),
                alt.Tooltip("share_pct_ci:Q", format=".3f", title="95% CI ±"),
                "seeds:Q",
            ],
        )
    )
    return (
        lines.properties(data=data, width=150, height=220)
        .facet(column=alt.Column("bits:N", title=None, sort=bits_order(data)))
        .properties(title="Weight oscillation during QAT (whole model), CNNs vs ViTs")
    )


WHOLE_MODEL_GROUP = "all"  # the analysis stage's row with every group quantized at once


def merged_order(sequences: list[list[str]]) -> list[str]:
    """One order of all items that keeps every sequence's order where they agree (a topological sort of
    "comes before" in some sequence), ties and conflicts broken by first appearance."""
    first_seen = list(dict.fromkeys(item for seq in sequences for item in seq))
    before = {item: set() for item in first_seen}
    for seq in sequences:
        for i, item in enumerate(seq):
            before[item].update(seq[:i])
    order: list[str] = []
    while len(order) < len(first_seen):
        left = [item for item in first_seen if item not in order]
        ready = [item for item in left if before[item] <= set(order)]
        order.append((ready or left)[0])  # with no item ready the sequences conflict: take the earliest
    return order


def sensitivity_heatmap(sensitivity: pd.DataFrame) -> alt.FacetChart:
    """Top-1 drop from FP32 (points) with one module group quantized alone (PTQ) and the rest FP32: rows =
    group in data-flow order (each model's order, as the CSV lists its rows), with the whole-model row
    last; columns = model (CNNs then ViTs); a panel per bit-width."""
    runs = labelled(sensitivity)
    data = mean_interval(runs, ["family", "model", "label", "group", "w_bits", "a_bits", "bits"], ["drop"])
    data = data.sort_values(MODEL_KEYS)
    groups = merged_order([list(dict.fromkeys(g.group)) for _, g in sensitivity.groupby(["model", "w_bits"])])
    groups = [g for g in groups if g != WHOLE_MODEL_GROUP] + [g for g in groups if g == WHOLE_MODEL_GROUP]
    # the colour scale spans the single groups; the whole-model drop, far larger at low bits, saturates
    single = data[data.group != WHOLE_MODEL_GROUP]["drop"]
    high = max(float(single.max()) if len(single) else float(data["drop"].max()), 1e-9)
    base = alt.Chart().encode(
        x=alt.X("label:N", sort=list(dict.fromkeys(data.label)), title=None, axis=alt.Axis(labelAngle=-30)),
        y=alt.Y(
            "group:N",
            sort=groups,
            title="Module group quantized alone",
            axis=alt.Axis(labelExpr=f"datum.value == '{WHOLE_MODEL_GROUP}' ? 'all (whole model)' : datum.value"),
        ),
    )
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color(
            "drop:Q",
            title="Top-1 drop (points)",
            # symmetric: a small gain (negative drop) is as pale as an equal loss, not full blue
            scale=alt.Scale(scheme="redblue", reverse=True, domain=[-high, high], clamp=True),
        ),
        tooltip=[
            "label:N",
            "group:N",
            "bits:N",
            alt.Tooltip("drop:Q", format=".2f"),
            alt.Tooltip("drop_ci:Q", format=".2f", title="95% CI ±"),
            "seeds:Q",
        ],
    )
    # dark cells get white numbers
    values = base.mark_text(fontSize=10).encode(
        text=alt.Text("drop:Q", format=".1f"),
        color=alt.when(f"abs(datum.drop) > {0.6 * high}").then(alt.value("white")).otherwise(alt.value("black")),
    )
    return (
        alt.layer(cells, values, data=data)
        .properties(width=alt.Step(56), height=alt.Step(24))
        .facet(column=alt.Column("bits:N", title=None, sort=bits_order(data)))
        .properties(title="Per-module sensitivity: top-1 drop from FP32, one module group quantized at a time")
    )


def onnx_vs_pytorch(accuracy: pd.DataFrame, palette: alt.Scale | None = None) -> alt.LayerChart:
    """What export costs: deployed (onnxruntime) minus PyTorch test top-1 per exported model and bit-width."""
    palette = model_palette(accuracy) if palette is None else palette
    exported = labelled(accuracy[accuracy.onnx_top1.notna()])
    exported["export_delta"] = exported.onnx_top1 - exported.top1
    data = mean_interval(
        exported, ["family", "model", "label", "w_bits", "a_bits", "bits"], ["export_delta", "top1", "onnx_top1"]
    )
    layers = _grouped_bars(
        data,
        "export_delta",
        "ONNX minus PyTorch top-1 (points)",
        palette,
        [
            "label:N",
            "bits:N",
            alt.Tooltip("top1:Q", format=".2f", title="PyTorch top-1"),
            alt.Tooltip("onnx_top1:Q", format=".2f", title="ONNX top-1"),
            alt.Tooltip("export_delta:Q", format="+.2f", title="difference"),
            "seeds:Q",
        ],
    )
    zero = alt.Chart().mark_rule(color="black").encode(y=alt.datum(0))
    return (
        alt.layer(*layers, zero, data=data)
        .properties(width=480, height=260)
        .properties(title="What export costs: deployed (ONNX) minus PyTorch test top-1 (FP32 and QAT models)")
    )


# every figure of the study, and the tidy tables (results/tables/<name>.csv) it is drawn from
FIGURE_TABLES = {
    "accuracy_by_bits": ("accuracy",),
    "drop_by_bits": ("accuracy",),
    "accuracy_vs_latency": ("accuracy", "bench"),
    "size_reduction": ("accuracy",),
    "oscillation": ("oscillation", "accuracy"),
    "onnx_vs_pytorch": ("accuracy",),
    "sensitivity": ("sensitivity",),
}


def figure(name: str, tables: dict[str, pd.DataFrame], bubble_batch: int) -> alt.TopLevelMixin:
    """The study's figure `name` from the tidy tables (by CSV stem) that FIGURE_TABLES lists for it; models
    take their colours from accuracy.csv where a figure is given it, so they match across figures."""
    palette = model_palette(tables["accuracy"]) if "accuracy" in tables else None
    builders = {
        "accuracy_by_bits": lambda: accuracy_by_bits(tables["accuracy"], palette),
        "drop_by_bits": lambda: drop_by_bits(tables["accuracy"], palette),
        "accuracy_vs_latency": lambda: accuracy_vs_latency(tables["accuracy"], tables["bench"], bubble_batch, palette),
        "size_reduction": lambda: size_reduction(tables["accuracy"], palette),
        "oscillation": lambda: oscillation_by_epoch(tables["oscillation"], palette),
        "onnx_vs_pytorch": lambda: onnx_vs_pytorch(tables["accuracy"], palette),
        "sensitivity": lambda: sensitivity_heatmap(tables["sensitivity"]),
    }
    return builders[name]()


def caption_markdown(rst: str) -> str:
    """A figure's caption (report/figures/<name>.rst) as Markdown: captions are plain paragraphs whose only
    markup is ``literal``, which Markdown writes `literal`."""
    return rst.replace("``", "`")


def save_chart(chart: alt.TopLevelMixin, stem: str | Path) -> list[Path]:
    """Write <stem>.png (at PRINT_PPI), .svg and self-contained .html, each atomically."""
    options = {"png": {"ppi": PRINT_PPI}, "svg": {}, "html": {"inline": True}}
    written = []
    for fmt in FORMATS:
        dest = Path(f"{stem}.{fmt}")
        with atomic_path(dest) as tmp:
            chart.save(str(tmp), format=fmt, **options[fmt])
        written.append(dest)
    return written
