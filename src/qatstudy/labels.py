"""Bit-width labels, one function per form, so that a bit pair is written the same way wherever it appears.

- `bit_tag`: `w4a8`, the tag of run folders, the `{tag}` wildcard, the config's `bits` and log lines
  (`parse_bit_tag` reads it back);
- `bits_heading`: `W4A8`, or `FP32` for a float model, in table headings and cells (summary tables, findings,
  ablation);
- `bits_label`: `4-bit` for equal weight and activation bits, else `W4A8`, `FP32` or `FP16`, in the charts.
"""

from __future__ import annotations

import re

FLOAT_BITS = 32  # the bit pair of a float (FP32) model in the records and tables
_BIT_TAG = re.compile(r"w(\d+)a(\d+)")


def bit_tag(w_bits: int, a_bits: int) -> str:
    """`w4a8`: the bit-width tag of a quantized run."""
    return f"w{w_bits}a{a_bits}"


def parse_bit_tag(tag: str) -> tuple[int, int]:
    """`w4a8` -> (4, 8)."""
    match = _BIT_TAG.fullmatch(tag)
    if not match:
        raise ValueError(f"bit-width tag must look like 'w4a4', got {tag!r}")
    return int(match[1]), int(match[2])


def bits_heading(w_bits: int, a_bits: int) -> str:
    """`W4A8`, or `FP32` for a float model: the bit pair in the tables."""
    return "FP32" if w_bits >= FLOAT_BITS else f"W{w_bits}A{a_bits}"


def bits_label(w_bits: int, a_bits: int, precision: str | None = None) -> str:
    """ "8-bit", "W4A8", "FP32", or "FP16" for a float model's FP16 TensorRT engine (bench.csv's precision): the bit
    pair in the charts."""
    if w_bits >= FLOAT_BITS:
        return "FP16" if precision == "fp16" else "FP32"
    return f"{w_bits}-bit" if w_bits == a_bits else f"W{w_bits}A{a_bits}"
