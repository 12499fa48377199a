"""The study's stages as plain functions: FP32 training, PTQ and QAT per bit-width.

Each writes a self-describing checkpoint (architecture, kwargs, quantization scheme, weights; qatstudy.checkpoints)
and a metrics JSON. Workflow entry points call these; tests call them directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from . import quant
from .batches import Splits
from .calibration import calibrate_on_training_split, calibration_batches
from .checkpoints import build, load_checkpoint, save_checkpoint
from .data import md5sum
from .io import write_json
from .models import count_parameters
from .objectives import QATObjective
from .stage_settings import BatchnormReestimation, QATSettings, TrainSettings
from .train import evaluate, fit, training_device


def _record(model: nn.Module, splits: Splits, identity: dict, **extra) -> dict:
    sizes = quant.model_size_bytes(model)
    quantizer_params = sum(p.numel() for _, q in quant.quantizers(model) for p in q.parameters())
    return {
        **identity,
        "input_shape": list(splits.image_shape),
        "params": count_parameters(model) - quantizer_params,
        "val_top1": evaluate(model, splits.x["val"], splits.y["val"]),
        "test_top1": evaluate(model, splits.x["test"], splits.y["test"]),
        **sizes,
        **extra,
    }


def train_fp32(
    *,
    data: str,
    arch: str,
    kwargs: dict,
    identity: dict,
    settings: TrainSettings,
    seed: int,
    pretrained: bool,
    checkpoint: str,
    metrics: str,
    zero_init_head: bool = False,
    provenance: dict | None = None,
    log=print,
) -> dict:
    device = training_device()
    splits = Splits(data, device)
    num_classes = int(splits.y["train"].max()) + 1
    torch.manual_seed(seed)
    model = build(
        arch,
        kwargs,
        num_classes=num_classes,
        in_chans=splits.image_shape[0],
        pretrained=pretrained,
        zero_init_head=zero_init_head,
    ).to(device)
    log(f"{arch}: {count_parameters(model):,} parameters, training on {len(splits.y['train'])} images ({device})")
    result = fit(
        model,
        splits,
        settings,
        seed=seed,
        resume_path=Path(checkpoint).with_suffix(".resume"),
        desc=f"{identity['model']} fp32",
        log=log,
        inputs={
            "data": md5sum(data),
            "arch": arch,
            "kwargs": kwargs,
            "pretrained": pretrained,
            "zero_init_head": zero_init_head,
        },
    )
    record = _record(
        model,
        splits,
        {**identity, "method": "fp32", "w_bits": 32, "a_bits": 32, "seed": seed},
        **result,
        provenance=provenance,
    )
    save_checkpoint(
        checkpoint,
        model,
        arch=arch,
        kwargs=kwargs,
        num_classes=num_classes,
        image_shape=splits.image_shape,
        scheme=None,
    )
    write_json(metrics, record)
    Path(checkpoint).with_suffix(".resume").unlink(missing_ok=True)
    log(f"fp32 val {record['val_top1']:.2f}%, test {record['test_top1']:.2f}%")
    return record


def _quantized_from_fp32(
    fp32_checkpoint: str,
    scheme: quant.QuantScheme,
    splits: Splits,
    *,
    calibration: str,
    calib_images: int,
    bn_reestimation: BatchnormReestimation,
    batch_size: int,
    seed: int,
) -> tuple[nn.Module, dict, dict]:
    """The FP32 model quantized by `scheme`, its step sizes calibrated and its batch norms re-estimated; with the
    checkpoint and the re-estimation's record."""
    fp32, ckpt = load_checkpoint(fp32_checkpoint)
    model = build(
        ckpt["arch"], ckpt["kwargs"], num_classes=ckpt["num_classes"], in_chans=ckpt["image_shape"][0], scheme=scheme
    )
    model.load_state_dict(fp32.state_dict(), strict=False)  # quantizer steps are set by calibration
    model.to(splits.device)
    calibrate_on_training_split(
        model, splits, method=calibration, images=calib_images, batch_size=batch_size, seed=seed
    )
    batchnorm = reestimate_batchnorm_if_better(model, splits, bn_reestimation, batch_size=batch_size, seed=seed)
    return model, ckpt, batchnorm


def reestimate_batchnorm_if_better(
    model: nn.Module, splits: Splits, settings: BatchnormReestimation, *, batch_size: int, seed: int
) -> dict:
    """Re-estimate the batch-norm statistics of the quantized model on `settings.images` seeded-random training
    images (quant.reestimate_batchnorm) and keep them only if validation top-1 gains at least `settings.min_gain`
    points; returns what happened. The check is there because re-estimation helps low-bit CNNs a lot but can cost
    a ViT's conv-stem norms; the margin, because a gain of a few validation images is noise (docs/methods.md,
    "Batch norm")."""
    norms = quant.batchnorms(model)
    if settings.images == 0 or not norms:
        return {"reestimated": False, "norms": len(norms)}
    saved = [{name: b.clone() for name, b in bn.named_buffers()} for bn in norms]
    before = evaluate(model, splits.x["val"], splits.y["val"])
    quant.reestimate_batchnorm(
        model, calibration_batches(splits, images=settings.images, batch_size=batch_size, seed=seed)
    )
    after = evaluate(model, splits.x["val"], splits.y["val"])
    kept = round(after - before, 6) >= settings.min_gain  # rounded: top-1 values are image counts in float
    if not kept:
        for bn, buffers in zip(norms, saved):
            bn.load_state_dict(buffers, strict=False)
    return {
        "reestimated": kept,
        "norms": len(norms),
        "images": settings.images,
        "min_gain": settings.min_gain,
        "val_top1_before": before,
        "val_top1_after": after,
    }


def ptq(
    *,
    data: str,
    fp32_checkpoint: str,
    scheme: quant.QuantScheme,
    identity: dict,
    calibration: str,
    calib_images: int,
    seed: int,
    metrics: str,
    fp32_seed: int | None = None,
    bn_reestimation: BatchnormReestimation = BatchnormReestimation(),
    provenance: dict | None = None,
    log=print,
) -> dict:
    """Post-training quantization: calibrate step sizes on a few training batches, no training. `seed` (the QAT
    seed) draws the calibration sample; `fp32_seed` is the FP32 model's, recorded."""
    splits = Splits(data, training_device())
    start = time.perf_counter()
    model, _, batchnorm = _quantized_from_fp32(
        fp32_checkpoint,
        scheme,
        splits,
        calibration=calibration,
        calib_images=calib_images,
        bn_reestimation=bn_reestimation,
        batch_size=128,
        seed=seed,
    )
    record = _record(
        model,
        splits,
        {
            **identity,
            "method": "ptq",
            "w_bits": scheme.w_bits,
            "a_bits": scheme.a_bits,
            "seed": fp32_seed,
            "qat_seed": seed,
        },
        quant=dataclasses.asdict(scheme),
        calibration=calibration,
        calib_images=calib_images,
        batchnorm=batchnorm,
        calib_time_s=time.perf_counter() - start,
        provenance=provenance,
    )
    write_json(metrics, record)
    log(f"ptq {scheme.tag}: val {record['val_top1']:.2f}%, test {record['test_top1']:.2f}%")
    return record


def qat(
    *,
    data: str,
    fp32_checkpoint: str,
    scheme: quant.QuantScheme,
    identity: dict,
    settings: TrainSettings,
    calibration: str,
    calib_images: int,
    seed: int,
    checkpoint: str,
    metrics: str,
    fp32_seed: int | None = None,
    bn_reestimation: BatchnormReestimation = BatchnormReestimation(),
    objective: QATSettings = QATSettings(),
    provenance: dict | None = None,
    log=print,
) -> dict:
    """Quantization-aware training: LSQ fake quantization initialised from the FP32 model, fine-tuned,
    with the FP32 model as distillation teacher when `objective.distill_weight` > 0. Batch-norm statistics are
    re-estimated for the quantized model before and after (kept where validation top-1 gains enough). `seed` (the
    QAT seed) fixes the calibration sample, the data order and the augmentation; `fp32_seed` is the FP32 model's,
    recorded."""
    splits = Splits(data, training_device())
    model, ckpt, batchnorm_init = _quantized_from_fp32(
        fp32_checkpoint,
        scheme,
        splits,
        calibration=calibration,
        calib_images=calib_images,
        bn_reestimation=bn_reestimation,
        batch_size=settings.batch_size,
        seed=seed,
    )
    teacher = load_checkpoint(fp32_checkpoint)[0].to(splits.device) if objective.distill_weight > 0 else None
    # Batch-norm statistics stay frozen during the short fine-tune: the deployed graph then computes
    # exactly what was trained (see docs/methods.md, "Batch norm").
    freeze_batchnorm(model)
    result = fit(
        model,
        splits,
        settings,
        seed=seed,
        resume_path=Path(checkpoint).with_suffix(".resume"),
        desc=f"{identity['model']} qat {scheme.tag}",
        log=log,
        objective=QATObjective(model, objective, teacher=teacher),
        inputs={
            "data": md5sum(data),
            "fp32": md5sum(fp32_checkpoint),
            "scheme": repr(scheme),
            "calibration": calibration,
            "calib_images": calib_images,
            "objective": repr(objective),
            "batchnorm": repr(bn_reestimation),
        },
    )
    batchnorm_final = reestimate_batchnorm_if_better(
        model, splits, bn_reestimation, batch_size=settings.batch_size, seed=seed
    )
    record = _record(
        model,
        splits,
        {
            **identity,
            "method": "qat",
            "w_bits": scheme.w_bits,
            "a_bits": scheme.a_bits,
            "seed": fp32_seed,
            "qat_seed": seed,
        },
        quant=dataclasses.asdict(scheme),
        calibration=calibration,
        objective=dataclasses.asdict(objective),
        batchnorm={"init": batchnorm_init, "final": batchnorm_final},
        **result,
        provenance=provenance,
    )
    save_checkpoint(
        checkpoint,
        model,
        arch=ckpt["arch"],
        kwargs=ckpt["kwargs"],
        num_classes=ckpt["num_classes"],
        image_shape=ckpt["image_shape"],
        scheme=scheme,
    )
    write_json(metrics, record)
    Path(checkpoint).with_suffix(".resume").unlink(missing_ok=True)
    log(f"qat {scheme.tag}: val {record['val_top1']:.2f}%, test {record['test_top1']:.2f}%")
    return record


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep every BatchNorm in eval mode (running statistics fixed) even when the model trains."""
    bns = quant.batchnorms(model)
    if not bns:
        return
    original_train = model.train

    def train(mode: bool = True):
        original_train(mode)
        for bn in bns:
            bn.eval()
        return model

    model.train = train
