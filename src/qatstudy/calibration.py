"""Calibration on the training split: the seeded sample of training images every calibration sees (PTQ, QAT's
initialisation, batch-norm re-estimation, the analysis, the ONNX layouts' output quantizers), and step sizes
initialised from it. The calibration methods themselves are qatstudy.quant.calibrate's."""

from __future__ import annotations

import torch
from torch import nn

from . import quant
from .batches import Splits, iterate_batches


def calibration_batches(splits: Splits, *, images: int, batch_size: int, seed: int):
    """Batches of `images` seeded-random training images, the data every calibration sees."""
    generator = torch.Generator().manual_seed(seed)
    return (
        xb
        for xb, _ in iterate_batches(
            splits.x["train"], splits.y["train"], batch_size, shuffle=True, generator=generator, limit=images
        )
    )


def calibrate_on_training_split(
    model: nn.Module, splits: Splits, *, method: str, images: int, batch_size: int, seed: int
) -> None:
    """Initialise every quantizer's step size from `images` seeded-random training images."""
    quant.calibrate(
        model, calibration_batches(splits, images=images, batch_size=batch_size, seed=seed), method=method, seed=seed
    )
