"""Time a QAT training step against an FP32 training step, per model of a study config.

Both steps run on the same random batch, with the same batch size, threads and optimizer (AdamW,
as `fit` creates it): forward, label loss, backward, optimizer step. The QAT step is the study's:
LSQ fake quantization of every conv/linear layer (calibrated once, minmax), frozen batch norm,
the config's QAT objective (distillation, bin regularizer) and the oscillation tracker's update
after the step, which is also reported on its own. Multi-crop distillation (`crops` > 1) feeds
QAT more images per step and is left out: both steps see the same batch. FP32 and QAT steps
alternate, so load from other processes falls on both alike; the table reports medians after warmup.

    uv run qatstudy bench-qat-step                      # config.yaml, w4a4
    uv run qatstudy bench-qat-step --bits w2a2 --steps 50 --models vit swin
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm.optim
import torch
import torch.nn.functional as F
import yaml

from . import quant
from .checkpoints import build
from .config import SCHEMA_PATH, load_config, merged_settings, model_objective, model_quant
from .data import get_spec
from .models import set_threads
from .objectives import QATObjective
from .stage_settings import QATSettings
from .stages import freeze_batchnorm

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
TARGET_RATIO = 1.6  # the QAT step may cost at most this many FP32 steps


def _timed_step(model, images, labels, optimizer, *, label_smoothing: float, objective=None) -> tuple[float, float]:
    """One training step as `fit` runs it; returns its seconds and those of the tracker update."""
    start = time.perf_counter()
    logits = model(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if objective is not None:
        loss = objective.loss(logits, loss, images, progress=0.5)  # mid-ramp: the regularizer is on
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    tracking = 0.0
    if objective is not None:
        tracked = time.perf_counter()
        objective.after_step(progress=0.5)
        tracking = time.perf_counter() - tracked
    return time.perf_counter() - start, tracking


def step_times(
    arch: str,
    kwargs: dict,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    scheme: quant.QuantScheme,
    batch_size: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float = 0.0,
    objective: QATSettings = QATSettings(),
    steps: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> dict:
    """Median milliseconds of an FP32 and a QAT training step of one model, measured alternately."""
    torch.manual_seed(seed)
    fp32 = build(arch, kwargs, num_classes=num_classes, in_chans=image_shape[0])
    qat = build(arch, kwargs, num_classes=num_classes, in_chans=image_shape[0], scheme=scheme)
    qat.load_state_dict(fp32.state_dict(), strict=False)
    images = torch.randn(batch_size, *image_shape)
    labels = torch.randint(0, num_classes, (batch_size,))
    quant.calibrate(qat, [images], method="minmax", seed=seed)
    freeze_batchnorm(qat)
    teacher = (
        build(arch, kwargs, num_classes=num_classes, in_chans=image_shape[0]) if objective.distill_weight else None
    )
    qat_objective_ = QATObjective(qat, objective, teacher=teacher)
    optimizers = {
        name: timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
        for name, model in (("fp32", fp32), ("qat", qat))
    }
    fp32.train()
    qat.train()
    times = {"fp32": [], "qat": [], "tracking": []}
    for i in range(warmup + steps):
        fp32_s, _ = _timed_step(fp32, images, labels, optimizers["fp32"], label_smoothing=label_smoothing)
        qat_s, tracking_s = _timed_step(
            qat, images, labels, optimizers["qat"], label_smoothing=label_smoothing, objective=qat_objective_
        )
        if i >= warmup:
            times["fp32"].append(fp32_s)
            times["qat"].append(qat_s)
            times["tracking"].append(tracking_s)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    return {
        "fp32_ms": ms["fp32"],
        "qat_ms": ms["qat"],
        "tracking_ms": ms["tracking"],
        "ratio": ms["qat"] / ms["fp32"],
        "steps": steps,
        "batch_size": batch_size,
    }


def bench_config(
    config: dict, *, models: list[str] | None = None, tag: str = "w4a4", steps: int = 20, warmup: int = 3
) -> list[dict]:
    """`step_times` for each model of a (schema-validated) study config, with its QAT settings."""
    spec = get_spec(config["dataset"]["name"])
    rows = []
    for name in models or list(config["models"]):
        model = config["models"][name]
        settings = merged_settings(config, "qat", name)
        scheme = quant.QuantScheme.from_tag(tag, **model_quant(config, name, SCHEMA))
        times = step_times(
            model["arch"],
            model.get("kwargs", {}),
            image_shape=(spec.in_chans, spec.img_size, spec.img_size),
            num_classes=spec.num_classes,
            scheme=scheme,
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            label_smoothing=settings.get("label_smoothing", 0.0),
            objective=QATSettings(**model_objective(config, name, SCHEMA)),
            steps=steps,
            warmup=warmup,
        )
        rows.append({"model": name, "arch": model["arch"], "bits": tag, **times})
    return rows


def format_table(rows: list[dict], threads: int, target: float = TARGET_RATIO) -> str:
    lines = [
        f"| model | arch | bits | batch | threads | FP32 ms/step | QAT ms/step | of which tracking ms | "
        f"QAT/FP32 | target <= {target}x |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['model']} | {r['arch']} | {r['bits']} | {r['batch_size']} | {threads} | {r['fp32_ms']:.1f} | "
        f"{r['qat_ms']:.1f} | {r['tracking_ms']:.1f} | {r['ratio']:.2f}x | "
        f"{'met' if r['ratio'] <= target else 'MISSED'} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """`qatstudy bench-qat-step`: print the table for the config's models (options in qatstudy.cli)."""
    config = load_config(args.config)
    threads = args.threads or config["threads"]["train"]
    set_threads(threads)  # also torch.set_flush_denormal(True), as every training job does
    rows = bench_config(config, models=args.models, tag=args.bits, steps=args.steps, warmup=args.warmup)
    print(format_table(rows, threads))
