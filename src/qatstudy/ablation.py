"""The QAT ablation table: one tidy row per arm run, and the paper-style table of arms (rows) by
bit-width x model (columns), as in the ablation of Huang et al., "Variation-aware Vision
Transformer Quantization" (2023)."""

from __future__ import annotations

import pandas as pd

from .io import read_json
from .labels import bits_heading
from .provenance import PROVENANCE_COLUMNS, provenance_columns
from .stats import mean_ci_text
from .tables import latex_escape, latex_row, markdown_row

ABLATION_COLUMNS = [
    "model",
    "family",
    "arm",
    "w_bits",
    "a_bits",
    "seed",
    "qat_seed",
    "top1",
    "fp32_top1",
    "val_top1",
    "last_epoch_val_gain",
    "oscillating_share",
    *PROVENANCE_COLUMNS,
]


def ablation_frame(
    arm_files: list[str], fp32_files: list[str], arms: list[str], arm_of: dict[str, str]
) -> pd.DataFrame:
    """One row per arm x model x bits x FP32 seed x QAT seed: test top-1, the FP32 model's, validation top-1 and
    what the last QAT epoch added to it (whether the fine-tune's budget still gains), and the share of weights
    oscillating at the last QAT epoch. `arm_of` names each file's arm (a main-protocol arm's files are the
    study's own QAT runs). Rows follow the config's arm order."""
    fp32_top1 = {(m["model"], m["seed"]): m["test_top1"] for m in map(read_json, fp32_files)}
    rows = []
    for f in arm_files:
        m = read_json(f)
        history = m.get("history") or [{}]
        last_epoch = history[-1]
        val_gain = last_epoch["val_top1"] - history[-2]["val_top1"] if len(history) > 1 else None
        rows.append(
            {
                **{k: m[k] for k in ("model", "family", "w_bits", "a_bits", "seed", "qat_seed")},
                "arm": arm_of[f],
                "top1": m["test_top1"],
                "fp32_top1": fp32_top1[(m["model"], m["seed"])],
                "val_top1": m.get("val_top1"),
                "last_epoch_val_gain": val_gain,
                "oscillating_share": last_epoch.get("oscillating_share"),
                **provenance_columns(m),
            }
        )
    frame = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    order = {arm: i for i, arm in enumerate(arms)}
    frame = frame.sort_values(
        ["arm", "family", "model", "w_bits", "a_bits", "seed", "qat_seed"],
        key=lambda col: col.map(order) if col.name == "arm" else col,
        ascending=[True, True, True, False, False, True, True],
        ignore_index=True,
    )
    return frame


def _grid(frame: pd.DataFrame, arms: list[str], models: list[str]) -> tuple[list[tuple], list[list[str]]]:
    """Columns (w_bits, a_bits, model), widest bits first, and the cell texts of the FP32 row and
    of each arm: top-1 mean ± 95% t-interval half-width over its runs (n)."""
    bits = sorted({(int(w), int(a)) for w, a in zip(frame.w_bits, frame.a_bits)}, reverse=True)
    columns = [(w, a, model) for w, a in bits for model in models]
    fp32 = ["FP32"] + [
        mean_ci_text(frame[frame.model == model].drop_duplicates(["model", "seed"]).fp32_top1, ".2f")
        for _, _, model in columns
    ]
    rows = [fp32]
    for arm in arms:
        cells = [
            mean_ci_text(
                frame[(frame.arm == arm) & (frame.w_bits == w) & (frame.a_bits == a) & (frame.model == model)].top1,
                ".2f",
            )
            for w, a, model in columns
        ]
        rows.append([arm] + cells)
    return columns, rows


def ablation_markdown(frame: pd.DataFrame, arms: list[str], models: list[str]) -> str:
    columns, rows = _grid(frame, arms, models)
    lines = [
        "| Arm | " + " | ".join(f"{bits_heading(w, a)} {model}" for w, a, model in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [markdown_row(row) for row in rows]
    lines += [
        "",
        "Top-1 (%) on the test split; mean ± 95% t-interval half-width over runs (n: FP32 seeds × QAT seeds) "
        "where there are several. Each arm is a QAT "
        "run from the same FP32 model with the overrides given in the config's `ablation.arms`.",
    ]
    return "\n".join(lines) + "\n"


def ablation_latex(frame: pd.DataFrame, arms: list[str], models: list[str]) -> str:
    """A booktabs tabular: a W/A header spanning each bit-width's models, the FP32 row, the arms."""
    columns, rows = _grid(frame, arms, models)
    bits = list(dict.fromkeys((w, a) for w, a, _ in columns))
    n = len(models)
    spans = " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{bits_heading(w, a)}}}" for w, a in bits)
    rules = " ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(bits)))
    lines = [
        rf"\begin{{tabular}}{{l{'r' * len(columns)}}}",
        r"\toprule",
        f" & {spans} \\\\",
        rules,
        "Method & " + " & ".join(latex_escape(model) for _, _, model in columns) + r" \\",
        r"\midrule",
    ]
    body = [latex_row(row) for row in rows]
    lines += [body[0], r"\midrule", *body[1:], r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
