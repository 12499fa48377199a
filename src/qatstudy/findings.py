"""The study's claims as rows: each an effect with its 95% interval and n, and whether the interval excludes zero
("shown"); a difference whose interval holds zero is not shown, whatever its sign.

Every family comparison (ViT minus CNN) is a Welch interval over one value per model and FP32 seed of each family:
QAT runs of one FP32 model are averaged first, since they share that model.
"""

from __future__ import annotations

import math

import pandas as pd

from .labels import FLOAT_BITS, bits_heading
from .stats import mean_ci, welch_ci
from .tables import markdown_row

FINDING_COLUMNS = ["claim", "subject", "w_bits", "a_bits", "effect", "ci_low", "ci_high", "n", "shown", "unit"]
FP32_BITS = FLOAT_BITS  # the bit pair of claims about the FP32 models themselves
POINTS = "top-1 points"
VAL_POINTS = "validation top-1 points"
PERCENT_OF_WEIGHTS = "% of weights"
# variation statistics compared across families (qatstudy.analysis), over the Conv2d / Linear weights and inputs
VARIATION_STATS = ("kurtosis", "channel_cv", "outlier_ratio")


def _row(
    claim: str, subject: str, w: int, a: int, effect: float, low: float, high: float, n: int, unit: str = POINTS
) -> dict:
    shown = bool(not math.isnan(low) and (low > 0 or high < 0))
    return {
        "claim": claim,
        "subject": subject,
        "w_bits": w,
        "a_bits": a,
        "effect": effect,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "shown": shown,
        "unit": unit,
    }


def _paired(claim: str, subject: str, w: int, a: int, differences: pd.Series, unit: str = POINTS) -> dict:
    """The mean of paired differences (one per independent unit) and its t-interval."""
    mean, half, n = mean_ci(differences)
    return _row(claim, subject, w, a, mean, mean - half, mean + half, n, unit)


def _family_gap(claim: str, w: int, a: int, values: pd.DataFrame, column: str, unit: str) -> list[dict]:
    """ViT minus CNN mean of `column` (one row per model and FP32 seed), or nothing without both families."""
    families = dict(list(values.groupby("family")))
    if not {"vit", "cnn"} <= set(families):
        return []
    effect, low, high, n = welch_ci(families["vit"][column], families["cnn"][column])
    return [_row(claim, "vit - cnn", w, a, effect, low, high, n, unit)]


def seed_drops(accuracy: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per model, bit pair and FP32 seed: that seed's FP32 top-1 minus the mean top-1 of its `method` runs (QAT seeds
    averaged within the FP32 seed)."""
    fp32 = accuracy[accuracy.method == "fp32"].set_index(["model", "seed"]).top1
    runs = accuracy[accuracy.method == method]
    quantized = runs.groupby(["model", "family", "w_bits", "a_bits", "seed"], as_index=False).top1.mean()
    quantized["top1_drop"] = fp32.reindex(list(zip(quantized.model, quantized.seed))).to_numpy() - quantized.top1
    return quantized


def accuracy_findings(accuracy: pd.DataFrame) -> list[dict]:
    """Per bit pair: each model's QAT drop from its own FP32 model, QAT minus PTQ per model (paired on the FP32
    model), and the ViT-minus-CNN QAT drop gap."""
    rows = []
    qat, ptq = seed_drops(accuracy, "qat"), seed_drops(accuracy, "ptq")
    for (w, a), at_bits in qat.groupby(["w_bits", "a_bits"], sort=False):
        for model, runs in at_bits.groupby("model"):
            rows.append(_paired("qat_drop_from_fp32", model, w, a, runs.set_index("seed")["top1_drop"]))
            ptq_runs = ptq[(ptq.model == model) & (ptq.w_bits == w) & (ptq.a_bits == a)].set_index("seed")
            if not ptq_runs.empty:
                gain = (ptq_runs["top1_drop"] - runs.set_index("seed")["top1_drop"]).dropna()  # QAT minus PTQ top-1
                rows.append(_paired("qat_minus_ptq", model, w, a, gain))
        rows += _family_gap("vit_minus_cnn_qat_drop", w, a, at_bits, "top1_drop", POINTS)
    return rows


def oscillation_findings(oscillation: pd.DataFrame) -> list[dict]:
    """Per bit pair: ViT minus CNN share of oscillating weights (whole model) in the last QAT epoch, for the
    oscillation measure and for the integer-flip count that also holds step-size jitter."""
    overall = oscillation[oscillation.layer == "(all)"]
    last = overall[
        overall.epoch
        == overall.groupby(["model", "w_bits", "a_bits", "seed", "qat_seed"], dropna=False).epoch.transform("max")
    ]
    measures = {"oscillating_share": "vit_minus_cnn_oscillation", "integer_flip_share": "vit_minus_cnn_integer_flips"}
    measures = {column: claim for column, claim in measures.items() if last[column].notna().any()}
    per_seed = last.groupby(["model", "family", "w_bits", "a_bits", "seed"], as_index=False)[list(measures)].mean()
    rows = []
    for (w, a), at_bits in per_seed.groupby(["w_bits", "a_bits"], sort=False):
        for column, claim in measures.items():
            rows += _family_gap(claim, w, a, at_bits.assign(pct=100.0 * at_bits[column]), "pct", PERCENT_OF_WEIGHTS)
    return rows


def variation_findings(variation: pd.DataFrame) -> list[dict]:
    """ViT minus CNN mean of each variation statistic over the layers' weights and over their inputs (attention
    internals, which CNNs lack, left out), of the FP32 models."""
    layers = variation[variation["group"] != "attention_map"]
    per_seed = layers.groupby(["model", "family", "seed", "kind"], as_index=False)[list(VARIATION_STATS)].mean()
    rows = []
    for kind, of_kind in per_seed.groupby("kind"):
        for stat in VARIATION_STATS:
            rows += _family_gap(f"vit_minus_cnn_{kind}_{stat}", FP32_BITS, FP32_BITS, of_kind, stat, stat)
    return rows


def ablation_findings(ablation: pd.DataFrame, main_arm: str) -> pd.DataFrame:
    """Per arm other than `main_arm`, model and bit pair: the arm's test top-1 minus the main protocol's, and its
    share of weights oscillating in the last QAT epoch minus the main protocol's, paired on the FP32 model and QAT
    seed (one difference per FP32 seed x QAT seed, t-interval over those pairs, so conditional on the ablation's
    FP32 models). Then, per model and bit pair, what the main protocol's last QAT epoch added to validation top-1
    (whether its budget has converged), over the same runs. Rows follow the table's arm order."""
    keys = ["model", "w_bits", "a_bits", "seed", "qat_seed"]
    frame = ablation.assign(oscillation_pct=100.0 * ablation.oscillating_share)
    main = frame[frame.arm == main_arm].set_index(keys)
    measures = {
        "top1": ("arm_minus_main_top1", POINTS),
        "oscillation_pct": ("arm_minus_main_oscillation", PERCENT_OF_WEIGHTS),
    }
    rows = []
    for (arm, model, w, a), runs in frame[frame.arm != main_arm].groupby(
        ["arm", "model", "w_bits", "a_bits"], sort=False
    ):
        paired = runs.set_index(keys)
        for column, (claim, unit) in measures.items():
            diff = (paired[column] - main[column].reindex(paired.index)).dropna()
            if diff.empty:
                continue
            rows.append(_paired(claim, f"{arm}: {model}", w, a, diff, unit))
    for (model, w, a), runs in frame[frame.arm == main_arm].groupby(["model", "w_bits", "a_bits"], sort=False):
        gains = runs.last_epoch_val_gain.dropna()
        if not gains.empty:
            rows.append(_paired("main_last_epoch_val_gain", f"{main_arm}: {model}", w, a, gains, VAL_POINTS))
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def findings_table(
    accuracy: pd.DataFrame, oscillation: pd.DataFrame | None = None, variation: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every claim the tables support: accuracy drops and gaps, oscillation and variation, ViT against CNN."""
    rows = accuracy_findings(accuracy)
    if oscillation is not None and not oscillation.empty:
        rows += oscillation_findings(oscillation)
    if variation is not None and not variation.empty:
        rows += variation_findings(variation)
    frame = pd.DataFrame(rows, columns=FINDING_COLUMNS)
    return frame.sort_values(
        ["claim", "w_bits", "a_bits", "subject"], ascending=[True, False, False, True], ignore_index=True
    )


def _number(value: float, unit: str, sign: str = "") -> str:
    return f"{value:{sign}.2f}" if unit in (POINTS, VAL_POINTS, PERCENT_OF_WEIGHTS) else f"{value:{sign}.3g}"


MAIN_NOTE = (
    "Test top-1 points: qat_drop_from_fp32 is each FP32 seed's FP32 top-1 minus its QAT runs' mean (QAT "
    "seeds averaged within it), t-interval over FP32 seeds; qat_minus_ptq is QAT minus PTQ top-1 on the same "
    "FP32 model, t-interval over FP32 seeds. vit_minus_cnn_*: the ViTs' mean minus the CNNs', Welch interval "
    "over one value per model and FP32 seed of each family — the QAT drop; the share of weights oscillating "
    "in the last QAT epoch (and of integer flips, which also count step-size jitter); and each FP32 "
    "variation statistic over the layers' weights or inputs. Shown: the 95% interval excludes zero."
)
ABLATION_NOTE = (
    "arm_minus_main_top1: the arm's test top-1 minus the main protocol's on the same FP32 model and QAT seed; "
    "arm_minus_main_oscillation: the same difference of the share of weights oscillating in the last QAT epoch. "
    "t-interval over those pairs (n), so it holds the QAT runs' randomness, not the FP32 models': the effect is "
    "the arm's on the ablation's FP32 models. main_last_epoch_val_gain: validation top-1 after the main protocol's "
    "last QAT epoch minus after the one before (a budget that has converged gains nothing), t-interval over its "
    "runs. Shown: the 95% interval excludes zero."
)


def findings_markdown(findings: pd.DataFrame, note: str = MAIN_NOTE) -> str:
    lines = ["| Claim | Subject | Bits | Effect | 95% CI | n | Shown | Unit |", "|---|---|---|---:|---|---:|---|---|"]
    for r in findings.itertuples():
        interval = "–" if math.isnan(r.ci_low) else f"[{_number(r.ci_low, r.unit)}, {_number(r.ci_high, r.unit)}]"
        lines.append(
            markdown_row(
                [
                    r.claim,
                    r.subject,
                    bits_heading(r.w_bits, r.a_bits),
                    _number(r.effect, r.unit, "+"),
                    interval,
                    str(r.n),
                    "yes" if r.shown else "not shown",
                    r.unit,
                ]
            )
        )
    lines += ["", note]
    return "\n".join(lines) + "\n"
