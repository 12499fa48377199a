"""Why ViTs and CNNs quantize differently: per-module-group sensitivity and variation statistics.

Module groups. Every quantizable layer (Conv2d / Linear) of a timm model falls into one group,
decided from module names alone:

- `head`: the classifier (`model.get_classifier()`) and any layer after the body (MobileNet's
  `conv_head`, the 1x1 conv feeding the pooled classifier).
- the body: layers under a stage container, `layer<k>` (ResNet) or `blocks.<i>`, `stages.<i>`,
  `layers.<i>` (MobileNet / EfficientNet, ConvNeXt, ViT, Swin).
- `stem`: the layers before the body (stem convs, patch embedding).
- CNN body layers are grouped by stage: `stage<k>` is `layer<k>`, or container index i + 1.
- ViT and Swin (models with a timm `Attention` / `WindowAttention`) body layers are grouped by
  role, from the end of their name: `attn.qkv` -> `qkv`, `attn.proj` -> `attn_proj`, `mlp.fc1` ->
  `fc1`, `mlp.fc2` -> `fc2`, Swin's `downsample.reduction` -> `patch_merging`; `attention_map` is
  the attention internals (Q, K, V and the softmax output, quantized by `quantize_attention`).
- anything else in the body is `other` (no default model has such a layer).

Sensitivity: post-training quantization of one group at a time (weights and activations at the
same bit-width), every other layer float; top-1 on the first validation images and the drop from FP32 (the test
split is kept for the study's reported results).
Variation: range, channel variation, kurtosis and outlier share of every tensor a quantizer
would see (weights, layer inputs, attention internals) in the FP32 model.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Collection, Iterable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from . import quant
from .batches import Splits
from .calibration import calibrate_on_training_split, calibration_batches
from .checkpoints import load_checkpoint
from .io import read_json, write_json
from .labels import bit_tag
from .provenance import PROVENANCE_COLUMNS, provenance_columns
from .train import evaluate, training_device

# groups in data-flow order; `stage` stands for stage1, stage2, ...
_GROUP_ORDER = ("stem", "stage", "qkv", "attention_map", "attn_proj", "fc1", "fc2", "patch_merging", "other", "head")
GROUP_NAME = re.compile(r"stage[1-9]\d*|" + "|".join(g for g in _GROUP_ORDER if g != "stage"))
_STAGE = re.compile(r"(?:layer(\d+)|(?:blocks|stages|layers)\.(\d+))(?:\.|$)")
_TRANSFORMER_ROLES = {
    "attn.qkv": "qkv",
    "attn.proj": "attn_proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
    "downsample.reduction": "patch_merging",
}
ALL_GROUPS = "all"  # the sensitivity row with every group quantized at once (= whole-model PTQ)
OUTLIER_SIGMAS = 3.0  # a value is an outlier beyond mean +- 3 std (0.27% of a normal distribution)
_ATTENTION_TENSORS = {"q_quantizer": "q", "k_quantizer": "k", "v_quantizer": "v", "attn_quantizer": "softmax"}

SENSITIVITY_COLUMNS = [
    "model",
    "family",
    "seed",
    "group",
    "w_bits",
    "a_bits",
    "top1",
    "fp32_top1",
    "drop",
    *PROVENANCE_COLUMNS,
]
STAT_COLUMNS = ["range_min", "range_max", "channel_cv", "kurtosis", "outlier_ratio"]
VARIATION_COLUMNS = ["model", "family", "seed", "layer", "group", "kind", *STAT_COLUMNS, *PROVENANCE_COLUMNS]


def _group_key(group: str) -> tuple[int, int]:
    if group.startswith("stage"):
        return _GROUP_ORDER.index("stage"), int(group[len("stage") :])
    return _GROUP_ORDER.index(group), 0


def _stage(name: str) -> int | None:
    match = _STAGE.match(name)
    if match is None:
        return None
    return int(match[1]) if match[1] is not None else int(match[2]) + 1


def _classifier_layers(model: nn.Module) -> set[str]:
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    prefix = next((name for name, m in model.named_modules() if m is classifier), None)
    if prefix is None:
        return set()
    return {name for name, _ in quant.quantizable_layers(model) if name == prefix or name.startswith(prefix + ".")}


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group name -> module names (Conv2d / Linear layers; attention modules for `attention_map`), in
    data-flow order. The rule is in the module docstring."""
    layers = [name for name, _ in quant.quantizable_layers(model)]
    head = _classifier_layers(model)
    body = [i for i, name in enumerate(layers) if _stage(name) is not None and name not in head]
    if not body:
        raise ValueError(
            f"{type(model).__name__}: no layer under layer<k>, blocks.<i>, stages.<i> or layers.<i>; "
            "module groups cannot be told apart"
        )
    attention = [name for name, _ in quant.attention_modules(model)]
    groups: dict[str, list[str]] = {"attention_map": attention} if attention else {}
    for i, name in enumerate(layers):
        if name in head or i > body[-1]:
            group = "head"
        elif i < body[0]:
            group = "stem"
        elif attention:
            group = next((g for suffix, g in _TRANSFORMER_ROLES.items() if name.endswith("." + suffix)), "other")
        else:
            group = f"stage{_stage(name)}" if _stage(name) is not None else "other"
        groups.setdefault(group, []).append(name)
    return {g: groups[g] for g in sorted(groups, key=_group_key)}


def check_group_names(names: Iterable[str]) -> None:
    unknown = [n for n in names if not GROUP_NAME.fullmatch(n)]
    if unknown:
        raise ValueError(
            f"unknown module group(s) {unknown} (config key analysis.sensitivity_groups); groups are "
            f"{', '.join(g for g in _GROUP_ORDER if g != 'stage')} and stage1, stage2, ..."
        )


def quantize_group(model: nn.Module, names: Collection[str], scheme: quant.QuantScheme) -> nn.Module:
    """A copy of `model` with only the named layers (and attention modules) quantized."""
    return quant.quantize_model(copy.deepcopy(model), scheme, names=names)


def sensitivity(
    model: nn.Module,
    splits: Splits,
    *,
    bits: Iterable[int],
    groups: Iterable[str] | None = None,
    quant_options: dict | None = None,
    calibration: str = "mse",
    calib_images: int = 1024,
    val_images: int | None = None,
    seed: int = 0,
    log=print,
) -> list[dict]:
    """Top-1 with one module group at a time quantized (PTQ), per bit-width, and the drop from FP32.

    Per bit-width the whole model is calibrated once, as the PTQ stage does (calibration runs the
    float model, so a group's step sizes do not depend on which other groups are quantized); each
    group's copy then takes its quantizers' step sizes from there. A last row, group `all`,
    quantizes every group at once. `groups` limits the groups measured (None: all the model has).
    """
    available = layer_groups(model)
    if groups is not None:
        check_group_names(groups)
    selected = [g for g in available if groups is None or g in groups]
    x_val, y_val = splits.x["val"][:val_images], splits.y["val"][:val_images]
    fp32_top1 = evaluate(model, x_val, y_val)
    modules = {g: len(names) for g, names in available.items()}
    modules[ALL_GROUPS] = sum(modules.values())
    rows = []

    def record(group: str, w_bits: int, model_q: nn.Module) -> None:
        top1 = evaluate(model_q, x_val, y_val)
        rows.append(
            {
                "group": group,
                "w_bits": w_bits,
                "a_bits": w_bits,
                "top1": top1,
                "fp32_top1": fp32_top1,
                "drop": fp32_top1 - top1,
                "modules": modules[group],
            }
        )
        log(f"{bit_tag(w_bits, w_bits)} {group}: top-1 {top1:.2f}% (drop {fp32_top1 - top1:.2f} points)")

    for b in bits:
        scheme = quant.QuantScheme(b, b, quantize_attention=True, **(quant_options or {}))
        calibrated = quant.quantize_model(copy.deepcopy(model), scheme)
        # the same calibration batches as the PTQ stage
        calibrate_on_training_split(
            calibrated, splits, method=calibration, images=calib_images, batch_size=128, seed=seed
        )
        steps = calibrated.state_dict()
        for group in selected:
            model_q = quantize_group(model, available[group], scheme)
            missing = model_q.load_state_dict(steps, strict=False).missing_keys
            if missing:
                raise RuntimeError(f"calibrated model lacks {missing}")
            record(group, b, model_q)
        record(ALL_GROUPS, b, calibrated)
    return rows


def _finite(value: torch.Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # constant tensors (a zero-initialised head) have no shape


def tensor_stats(x: torch.Tensor, channel_dim: int) -> dict[str, float | None]:
    """Variation statistics of one tensor.

    `range_min` / `range_max`: its extremes. `channel_cv`: coefficient of variation (population
    std / mean) of the per-channel max |x| along `channel_dim` (output channels of a weight,
    feature channels of an activation, heads of attention tensors): how far one per-tensor step
    size is from fitting every channel. `kurtosis`: Pearson's, E[(x - mean)^4] / var^2, 3 for a
    normal distribution (not the excess). `outlier_ratio`: share of values beyond OUTLIER_SIGMAS
    population standard deviations from the mean.
    """
    x = x.detach().double()
    channel_absmax = x.abs().movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1).amax(dim=1)
    centred = x.flatten() - x.mean()
    variance = centred.pow(2).mean()
    return {
        "range_min": float(x.min()),
        "range_max": float(x.max()),
        "channel_cv": _finite(channel_absmax.std(correction=0) / channel_absmax.mean()),
        "kurtosis": _finite(centred.pow(4).mean() / variance**2),
        "outlier_ratio": float((centred.abs() > OUTLIER_SIGMAS * variance.sqrt()).double().mean()),
    }


@torch.no_grad()
def variation(model: nn.Module, images: torch.Tensor) -> list[dict]:
    """Statistics of every tensor a quantizer would see, for one forward pass of `images`.

    One row per quantizable layer's weight (`kind` weight) and input (`kind` activation), and per
    attention module's Q, K, V and softmax output (`kind` activation, group `attention_map`,
    channels = heads). The tensors are caught by quantizer observers (the calibration hook), so
    they are exactly what quantization sees; with observers set, the forward pass is float.
    """
    group_of = {name: group for group, names in layer_groups(model).items() for name in names}
    probe = quant.quantize_model(copy.deepcopy(model), quant.QuantScheme(8, 8, quantize_attention=True))
    rows: dict[tuple[str, str], dict] = {}

    def observer(layer: str, group: str, kind: str, channel_dim: int):
        def observe(x: torch.Tensor) -> None:
            rows[layer, kind] = {"layer": layer, "group": group, "kind": kind, **tensor_stats(x, channel_dim)}

        return observe

    for name, layer in quant.quant_modules(probe):
        layer.weight_quantizer.observer = observer(name, group_of[name], "weight", 0)
        layer.input_quantizer.observer = observer(
            name, group_of[name], "activation", 1 if isinstance(layer, nn.Conv2d) else -1
        )
    for name, _ in quant.attention_modules(model):
        attention = probe.get_submodule(name)
        for attribute, tensor in _ATTENTION_TENSORS.items():
            getattr(attention, attribute).observer = observer(f"{name}.{tensor}", "attention_map", "activation", 1)
    probe.eval()
    probe(images)
    return list(rows.values())


def _fp32_model_and_splits(checkpoint: str, data: str) -> tuple[nn.Module, Splits]:
    """The FP32 model of `checkpoint` and the splits of `data`, both on the training device."""
    model, ckpt = load_checkpoint(checkpoint)
    if ckpt["scheme"] is not None:
        raise ValueError(f"{checkpoint} is a quantized checkpoint; the analysis starts from the FP32 model")
    device = training_device()
    return model.to(device), Splits(data, device)


def analyse_sensitivity(
    *,
    data: str,
    fp32_checkpoint: str,
    identity: dict,
    seed: int,
    bits: list[int],
    groups: list[str] | None,
    quant_options: dict,
    calibration: str,
    calib_images: int,
    val_images: int | None,
    output: str,
    provenance: dict | None = None,
    log=print,
) -> dict:
    """The sensitivity of one FP32 run, written as JSON (rows plus the group -> layers map)."""
    start = time.perf_counter()
    model, splits = _fp32_model_and_splits(fp32_checkpoint, data)
    rows = sensitivity(
        model,
        splits,
        bits=bits,
        groups=groups,
        quant_options=quant_options,
        calibration=calibration,
        calib_images=calib_images,
        val_images=val_images,
        seed=seed,
        log=log,
    )
    record = {
        **identity,
        "seed": seed,
        "val_images": len(splits.y["val"][:val_images]),
        "calibration": calibration,
        "calib_images": calib_images,
        "groups": layer_groups(model),
        "rows": rows,
        "time_s": time.perf_counter() - start,
        "provenance": provenance,
    }
    write_json(output, record)
    return record


def analyse_variation(
    *,
    data: str,
    fp32_checkpoint: str,
    identity: dict,
    seed: int,
    images: int,
    output: str,
    provenance: dict | None = None,
    log=print,
) -> dict:
    """The variation statistics of one FP32 run on `images` seeded-random training images, as JSON."""
    start = time.perf_counter()
    model, splits = _fp32_model_and_splits(fp32_checkpoint, data)
    xb = next(calibration_batches(splits, images=images, batch_size=images, seed=seed))
    rows = variation(model, xb)
    record = {
        **identity,
        "seed": seed,
        "images": len(xb),
        "rows": rows,
        "time_s": time.perf_counter() - start,
        "provenance": provenance,
    }
    write_json(output, record)
    log(f"{len(rows)} tensors described in {record['time_s']:.1f} s")
    return record


def _tidy(files: Iterable[str | Path], columns: list[str]) -> pd.DataFrame:
    rows = []
    for f in files:
        record = read_json(f)
        key = {k: record[k] for k in ("model", "family", "seed")}
        rows += [{**key, **row, **provenance_columns(record)} for row in record["rows"]]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["family", "model", "seed"], kind="stable", ignore_index=True)


def sensitivity_table(files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per model x seed x bit-width x group (and group `all`); `drop` in points of top-1."""
    return _tidy(files, SENSITIVITY_COLUMNS)


def variation_table(files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per model x seed x tensor (weight or input of a layer, or an attention internal)."""
    return _tidy(files, VARIATION_COLUMNS)


def variation_summary(variation: pd.DataFrame) -> pd.DataFrame:
    """Means over layers, models and seeds, per family and kind.

    `scope` "layers" covers the Conv2d / Linear weights and inputs, comparable across families;
    "attention_map" the ViTs' Q, K, V and softmax outputs.
    """
    frame = variation.assign(scope=variation["group"].where(variation["group"] == "attention_map", "layers"))
    summary = frame.groupby(["family", "kind", "scope"], sort=True)[STAT_COLUMNS].mean()
    summary.insert(0, "tensors", frame.groupby(["family", "kind", "scope"]).size())
    return summary.reset_index()
