"""The training engine shared by FP32 training and QAT: seeded, resumable, val-selected."""

from __future__ import annotations

import collections
import copy
import os
import time
from pathlib import Path

import timm.optim
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .batches import Splits, augment, iterate_batches
from .divergence import DivergenceCheck
from .io import atomic_path
from .quant import quantizers
from .stage_settings import TrainSettings

DEVICE_ENV = "QATSTUDY_DEVICE"


def training_device() -> torch.device:
    """Where the stages train and evaluate: $QATSTUDY_DEVICE if set (e.g. `cpu` on a GPU machine),
    else the first CUDA GPU when PyTorch sees one, else the CPU."""
    return torch.device(os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb in iterate_batches(x, y, batch_size):
        correct += int((model(xb).argmax(dim=1) == yb).sum())
    model.train(was_training)
    return 100.0 * correct / len(y)


def param_groups(model: nn.Module, settings: TrainSettings) -> list[dict]:
    """AdamW parameter groups: timm's weight-decay split, plus one group per quantizer range holding
    the step sizes (and offsets) of the quantizers with that largest integer `qmax`, at
    `lr * quantizer_lr_scale / qmax` and without decay.

    LSQ's gradient scale is meant for SGD; Adam normalises it away and moves every parameter by
    about lr per step, whatever its scale. A step size is about range / qmax, so dividing its lr by
    qmax makes the relative change per step the same at every bit-width: at the weights' lr, half
    of the 8-bit integer weights oscillated (MobileNetV2 W8A8 QAT lost 0.70 points, measured).
    """
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # as timm's optimizer factory
    by_qmax = collections.defaultdict(list)
    for _, quantizer in quantizers(model):
        by_qmax[quantizer.step_levels].extend(quantizer.parameters(recurse=False))
    quantizer_ids = {id(p) for params in by_qmax.values() for p in params}
    groups = [
        {**group, "params": [p for p in group["params"] if id(p) not in quantizer_ids]}
        for group in timm.optim.param_groups_weight_decay(model, settings.weight_decay, no_weight_decay_list=no_decay)
    ]
    return groups + [
        {"params": params, "weight_decay": 0.0, "lr": settings.lr * settings.quantizer_lr_scale / qmax}
        for qmax, params in sorted(by_qmax.items())
    ]


def _rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state()}


def fit(
    model: nn.Module,
    splits: Splits,
    settings: TrainSettings,
    *,
    seed: int,
    resume_path: str | Path,
    desc: str = "train",
    inputs: dict | None = None,
    objective=None,
    log=print,
) -> dict:
    """Train `model` in place and leave it at its best-validation epoch.

    After every epoch the full training state is saved to `resume_path`; a rerun with the same
    settings, seed and `inputs` (what the run starts from: data and checkpoint digests, model,
    scheme) continues from there. `objective` (a `QATObjective`) adds QAT's loss terms, multi-crop
    batches and oscillation tracking. Returns the per-epoch history and timings.
    """
    resume_path = Path(resume_path)
    fingerprint = settings.fingerprint(seed=seed, desc=desc, inputs=inputs or {})
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = timm.optim.create_optimizer_v2(
        model,
        "adamw",
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        param_group_fn=lambda m: param_groups(m, settings),
    )
    n_train = (
        len(splits.y["train"])
        if settings.images_per_epoch is None
        else min(settings.images_per_epoch, len(splits.y["train"]))
    )
    steps_per_epoch = -(-n_train // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=settings.warmup_fraction,
        anneal_strategy="cos",
    )
    state = {"epoch": 0, "history": [], "best_val": -1.0, "best_state": None, "train_time_s": 0.0}
    if resume_path.exists():
        saved = torch.load(resume_path, weights_only=False)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng"]["torch"])
            generator.set_state(saved["rng"]["generator"])
            state = saved["state"]
            if objective is not None:
                objective.load_state_dict(saved["objective"])
            log(f"resumed {desc} from {resume_path} after epoch {state['epoch']}")
        else:
            log(f"ignoring {resume_path}: it was written with other settings")
    check_divergence = DivergenceCheck(desc)  # a non-finite or exploding loss stops the run (qatstudy.divergence)
    for epoch in range(state["epoch"], settings.epochs):
        model.train()
        start = time.perf_counter()
        total_loss, seen = 0.0, 0
        batches = iterate_batches(
            splits.x["train"], splits.y["train"], settings.batch_size, shuffle=True, generator=generator, limit=n_train
        )
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"{desc} epoch {epoch + 1}/{settings.epochs}",
            mininterval=5.0,
            leave=True,
        )
        crops = objective.crops if objective is not None else 1
        for step, (xb, yb) in enumerate(bar):
            xb = torch.cat([augment(xb, settings.crop_padding, settings.hflip, generator) for _ in range(crops)])
            yb = yb.repeat(crops)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=settings.label_smoothing)
            if objective is not None:
                progress = (epoch * steps_per_epoch + step) / (settings.epochs * steps_per_epoch)
                loss = objective.loss(logits, loss, xb, progress)
            check_divergence(loss.item(), epoch=epoch, step=step, num_classes=logits.shape[1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if objective is not None:
                objective.after_step((epoch * steps_per_epoch + step + 1) / (settings.epochs * steps_per_epoch))
            total_loss += loss.item() * len(yb)
            seen += len(yb)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
        epoch_time = time.perf_counter() - start
        if objective is not None:
            objective.end_epoch()
        val_top1 = evaluate(model, splits.x["val"], splits.y["val"])
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train_loss": total_loss / seen,
                "val_top1": val_top1,
                "epoch_time_s": epoch_time,
                "images_per_s": seen / epoch_time,
                **(objective.epoch_summary() if objective is not None else {}),
            }
        )
        state["train_time_s"] += epoch_time
        if val_top1 > state["best_val"]:
            state["best_val"] = val_top1
            state["best_state"] = copy.deepcopy(model.state_dict())
        state["epoch"] = epoch + 1
        oscillation = (
            f", {100 * state['history'][-1]['oscillating_share']:.2f}% of weights oscillating"
            if objective is not None
            else ""
        )
        log(
            f"{desc} epoch {epoch + 1}: loss {total_loss / seen:.4f}, val top-1 {val_top1:.2f}%, "
            f"{seen / epoch_time:.0f} img/s{oscillation}"
        )
        with atomic_path(resume_path) as tmp:
            torch.save(
                {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(generator),
                    "state": state,
                    "objective": objective.state_dict() if objective is not None else None,
                },
                tmp,
            )
    if objective is not None:
        objective.release()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    best_epoch = max(state["history"], key=lambda h: h["val_top1"])["epoch"] if state["history"] else 0
    return {"history": state["history"], "best_epoch": best_epoch, "train_time_s": state["train_time_s"]}
