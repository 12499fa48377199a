"""Confidence intervals for the study's tables: a mean with its two-sided 95% Student-t interval over
independent runs, where QAT runs of one FP32 model are first averaged (they share that model, so they are not
independent of each other)."""

from __future__ import annotations

import math

import pandas as pd

# two-sided 95% quantiles of Student's t, t_{0.975}(df), for df = 1..30
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
_Z975 = 1.959964


def t_critical(df: int) -> float:
    """t_{0.975}(df): the table up to 30 degrees of freedom, beyond it the Cornish-Fisher expansion to second
    order, z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2) (within 0.001 of the exact value there)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of its 95% t-interval (NaN for a single value) and n, NaNs dropped."""
    values = pd.Series(values, dtype=float).dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(values.iloc[0]), math.nan, 1
    return float(values.mean()), t_critical(n - 1) * float(values.std(ddof=1)) / math.sqrt(n), n


def mean_ci_text(values: pd.Series, fmt: str) -> str:
    """'mean ± half-width (n=k)', or the mean alone for one value, or '–' for none."""
    mean, half, n = mean_ci(values)
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} ± {half:{fmt}} (n={n})"


def per_fp32_seed(runs: pd.DataFrame, column: str) -> pd.Series:
    """`column` averaged over the QAT seeds of each FP32 seed: one independent value per FP32 model."""
    return runs.groupby("seed")[column].mean()


def welch_ci(a: pd.Series, b: pd.Series) -> tuple[float, float, float, int]:
    """Mean of `a` minus mean of `b` (independent samples) and its 95% Welch t-interval: (effect, low, high, n),
    n = both sample sizes together; degrees of freedom by Welch-Satterthwaite, rounded down."""
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    effect = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return effect, math.nan, math.nan, len(a) + len(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return effect, effect, effect, len(a) + len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_critical(max(1, math.floor(df + 1e-9))) * se  # floor, but 3.9999999 from rounding is 4
    return effect, effect - half, effect + half, len(a) + len(b)
