"""Models built from their description (timm architecture, kwargs, optional quantization scheme), and saved and
loaded as self-describing checkpoints: architecture, kwargs, classes, image shape, scheme and weights, so that a
checkpoint rebuilds its model (quantizers included) without the config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from . import quant
from .io import atomic_path
from .models import create_model


def build(
    arch: str,
    kwargs: dict,
    *,
    num_classes: int,
    in_chans: int,
    scheme: quant.QuantScheme | None = None,
    pretrained: bool = False,
    zero_init_head: bool = False,
) -> nn.Module:
    model = create_model(
        arch,
        num_classes=num_classes,
        in_chans=in_chans,
        kwargs=kwargs,
        pretrained=pretrained,
        zero_init_head=zero_init_head,
    )
    if scheme is not None:
        quant.quantize_model(model, scheme)
    return model


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    kwargs: dict,
    num_classes: int,
    image_shape: tuple,
    scheme: quant.QuantScheme | None,
) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "arch": arch,
                "kwargs": kwargs,
                "num_classes": num_classes,
                "image_shape": list(image_shape),
                "scheme": None if scheme is None else dataclasses.asdict(scheme),
                "state_dict": model.state_dict(),
            },
            tmp,
        )


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes (quantizers included) and load its weights."""
    ckpt = torch.load(path, weights_only=False, map_location="cpu")
    scheme = quant.QuantScheme(**ckpt["scheme"]) if ckpt["scheme"] else None
    model = build(
        ckpt["arch"], ckpt["kwargs"], num_classes=ckpt["num_classes"], in_chans=ckpt["image_shape"][0], scheme=scheme
    )
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
