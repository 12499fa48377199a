"""The study's claims as rows: each an effect with its 95% interval and n, and whether the interval excludes zero
("shown"); a difference whose interval holds zero is not shown, whatever its sign."""

from __future__ import annotations

import math

import pandas as pd

from .stats import mean_ci, welch_ci

FINDING_COLUMNS = ["claim", "subject", "w_bits", "a_bits", "effect", "ci_low", "ci_high", "n", "shown", "unit"]


def _row(claim: str, subject: str, w: int, a: int, effect: float, low: float, high: float, n: int) -> dict:
    shown = bool(not math.isnan(low) and (low > 0 or high < 0))
    return {"claim": claim, "subject": subject, "w_bits": w, "a_bits": a, "effect": effect, "ci_low": low,
            "ci_high": high, "n": n, "shown": shown, "unit": "top-1 points"}


def _paired(claim: str, subject: str, w: int, a: int, per_seed: pd.Series) -> dict:
    mean, half, n = mean_ci(per_seed)
    return _row(claim, subject, w, a, mean, mean - half, mean + half, n)


def seed_drops(accuracy: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per model, bit pair and FP32 seed: that seed's FP32 top-1 minus the mean top-1 of its `method` runs (QAT seeds
    averaged within the FP32 seed)."""
    fp32 = accuracy[accuracy.method == "fp32"].set_index(["model", "seed"]).top1
    runs = accuracy[accuracy.method == method]
    quantized = runs.groupby(["model", "family", "w_bits", "a_bits", "seed"], as_index=False).top1.mean()
    quantized["top1_drop"] = fp32.reindex(list(zip(quantized.model, quantized.seed))).to_numpy() - quantized.top1
    return quantized


def findings_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per bit pair: each model's QAT and PTQ drop from its own FP32 model, QAT minus PTQ per model (paired on the
    FP32 model), and the ViT-minus-CNN QAT drop gap (Welch, over every model and FP32 seed of each family)."""
    rows = []
    qat, ptq = seed_drops(accuracy, "qat"), seed_drops(accuracy, "ptq")
    for (w, a), at_bits in qat.groupby(["w_bits", "a_bits"], sort=False):
        for model, runs in at_bits.groupby("model"):
            rows.append(_paired("qat_drop_from_fp32", model, w, a, runs.set_index("seed")["top1_drop"]))
            ptq_runs = ptq[(ptq.model == model) & (ptq.w_bits == w) & (ptq.a_bits == a)].set_index("seed")
            if not ptq_runs.empty:
                gain = (ptq_runs["top1_drop"] - runs.set_index("seed")["top1_drop"]).dropna()  # QAT top-1 minus PTQ top-1
                rows.append(_paired("qat_minus_ptq", model, w, a, gain))
        families = dict(list(at_bits.groupby("family")))
        if {"vit", "cnn"} <= set(families):
            effect, low, high, n = welch_ci(families["vit"]["top1_drop"], families["cnn"]["top1_drop"])
            rows.append(_row("vit_minus_cnn_qat_drop", "vit - cnn", w, a, effect, low, high, n))
    frame = pd.DataFrame(rows, columns=FINDING_COLUMNS)
    return frame.sort_values(["claim", "w_bits", "a_bits", "subject"], ascending=[True, False, False, True],
                             ignore_index=True)


def findings_markdown(findings: pd.DataFrame) -> str:
    lines = ["| Claim | Subject | Bits | Effect | 95% CI | n | Shown |", "|---|---|---|---:|---|---:|---|"]
    for r in findings.itertuples():
        interval = "–" if math.isnan(r.ci_low) else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
        lines.append(f"| {r.claim} | {r.subject} | W{r.w_bits}A{r.a_bits} | {r.effect:+.2f} | {interval} | {r.n} | "
                     f"{'yes' if r.shown else 'not shown'} |")
    lines += ["", "Effects in test top-1 points. qat_drop_from_fp32: each FP32 seed's FP32 top-1 minus its QAT runs' "
              "mean (QAT seeds averaged within it), t-interval over FP32 seeds. qat_minus_ptq: QAT minus PTQ top-1 on "
              "the same FP32 model, t-interval over FP32 seeds. vit_minus_cnn_qat_drop: mean QAT drop of the ViTs' "
              "runs minus the CNNs', Welch interval over every model and FP32 seed of each family. Shown: the 95% "
              "interval excludes zero."]
    return "\n".join(lines) + "\n"
