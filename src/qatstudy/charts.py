"""The study's Altair charts, built from the tidy CSVs only, saved as PNG, SVG and HTML."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd

from .io import atomic_path

FAMILY_COLORS = {"cnn": "#1f77b4", "vit": "#d62728"}
# shades per family, so every model keeps its family's hue in every figure
FAMILY_SHADES = {"cnn": ["#1f77b4", "#6baed6", "#08519c", "#9ecae1", "#3182bd"],
                 "vit": ["#d62728", "#fc9272", "#a50f15", "#fcbba1", "#ef3b2c"]}
FORMATS = ("png", "svg", "html")


def model_colors(frame: pd.DataFrame, label: str = "label") -> alt.Scale:
    """A colour per model label, shaded within its family's hue."""
    pairs = frame[["family", label]].drop_duplicates().sort_values(["family", label])
    domain, colors = [], []
    for family, group in pairs.groupby("family", sort=True):
        shades = FAMILY_SHADES.get(family, ["#7f7f7f"])
        for i, name in enumerate(group[label]):
            domain.append(name)
            colors.append(shades[i % len(shades)])
    return alt.Scale(domain=domain, range=colors)


def bits_label(w_bits: int, a_bits: int) -> str:
    return "FP32" if w_bits >= 32 else (f"{w_bits}-bit" if w_bits == a_bits else f"W{w_bits}A{a_bits}")


def _bits_order(frame: pd.DataFrame) -> list[str]:
    pairs = sorted({(int(w), int(a)) for w, a in zip(frame.w_bits, frame.a_bits)}, reverse=True)
    return [bits_label(w, a) for w, a in pairs]


def accuracy_by_bits(accuracy: pd.DataFrame) -> alt.Chart:
    """Top-1 per bit-width, PTQ and QAT side by side, each model a bar; FP32 shown with both."""
    frame = accuracy.copy()
    frame["bits"] = [bits_label(w, a) for w, a in zip(frame.w_bits, frame.a_bits)]
    fp32 = frame[frame.method == "fp32"]
    panels = [pd.concat([fp32.assign(method=m), frame[frame.method == m]]) for m in ("ptq", "qat")]
    data = pd.concat(panels, ignore_index=True)
    data["method"] = data.method.str.upper()
    data["label"] = data.model + " (" + data.family.str.upper() + ")"
    order = _bits_order(data)
    colors = model_colors(data)
    base = alt.Chart(data).encode(
        x=alt.X("bits:N", sort=order, title="Bits (W = A)", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("label:N", sort=colors.domain),
        color=alt.Color("label:N", sort=colors.domain, title="Model (family)", scale=colors),
    )
    bars = base.mark_bar().encode(
        y=alt.Y("mean(top1):Q", title="Test top-1 (%)", scale=alt.Scale(domain=[0, 100])),
        tooltip=["label:N", "method:N", "bits:N", alt.Tooltip("mean(top1):Q", format=".2f"),
                 alt.Tooltip("count(top1):Q", title="seeds")],
    )
    errors = base.mark_errorbar(extent="stdev", color="black").encode(y=alt.Y("top1:Q", title="Test top-1 (%)"))
    return (alt.layer(bars, errors, data=data).properties(width=300, height=280)
            .facet(column=alt.Column("method:N", title=None, sort=["PTQ", "QAT"]))
            .properties(title="Test top-1 by bit-width: ViTs and CNNs, PTQ vs QAT"))


def accuracy_vs_latency(accuracy: pd.DataFrame, bench: pd.DataFrame, batch: int) -> alt.Chart:
    """Bubble chart: deployed top-1 against latency; bubble area = model file size."""
    keys = ["model", "family", "method", "w_bits", "a_bits", "seed"]
    b = bench[bench.batch == batch]
    data = b.merge(accuracy[keys + ["top1", "onnx_top1"]], on=keys, how="inner")
    data["bits"] = [bits_label(w, a) for w, a in zip(data.w_bits, data.a_bits)]
    data["deployed_top1"] = data.onnx_top1.fillna(data.top1)
    data["model_mb"] = data.model_bytes / 1e6
    return alt.Chart(data).mark_point(filled=True, opacity=0.7, stroke="black", strokeWidth=0.5).encode(
        x=alt.X("mean(latency_ms_p50):Q", title=f"Latency p50 at batch {batch} (ms, {b.backend.iloc[0] if len(b) else ''})",
                scale=alt.Scale(type="log")),
        y=alt.Y("mean(deployed_top1):Q", title="Deployed (ONNX) test top-1 (%)", scale=alt.Scale(zero=False)),
        size=alt.Size("mean(model_mb):Q", title="Model file (MB)", scale=alt.Scale(range=[40, 1600])),
        color=alt.Color("family:N", title="Family", scale=alt.Scale(domain=list(FAMILY_COLORS),
                                                                    range=list(FAMILY_COLORS.values()))),
        shape=alt.Shape("bits:N", title="Bits", sort=_bits_order(data)),
        detail="model:N",
        tooltip=["model:N", "bits:N", alt.Tooltip("mean(deployed_top1):Q", format=".2f"),
                 alt.Tooltip("mean(latency_ms_p50):Q", format=".3f"), alt.Tooltip("mean(model_mb):Q", format=".3f")],
    ).properties(width=520, height=360, title="Accuracy against latency (bubble area = model size)")


def save_chart(chart: alt.Chart, stem: str | Path) -> list[Path]:
    """Write <stem>.png (2x scale), .svg and self-contained .html, each atomically."""
    written = []
    for fmt in FORMATS:
        dest = Path(f"{stem}.{fmt}")
        with atomic_path(dest) as tmp:
            kwargs = {"scale_factor": 2.0} if fmt == "png" else ({"inline": True} if fmt == "html" else {})
            chart.save(str(tmp), format=fmt, **kwargs)
        written.append(dest)
    return written
