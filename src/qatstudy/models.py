"""Models come from timm's registry; this module adds small-image variants to that registry.

`vit_convstem_tiny` and `swin_convstem_tiny` are timm's VisionTransformer and SwinTransformer
with a convolutional stem in place of the single strided patch projection: on small datasets
the stem's locality is what lets a ViT learn in a few epochs (Xiao et al. 2021, "Early
convolutions help transformers see better").
"""

from __future__ import annotations

import math

import timm
import torch
from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class ConvStemPatchEmbed(PatchEmbed):
    """Patch embedding by stride-2 3x3 conv-BN-ReLU stages (log2(patch) of them) and a 1x1 conv."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **kwargs)
        stages = int(math.log2(self.patch_size[0]))
        if 2**stages != self.patch_size[0] or self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"conv stem needs a square power-of-two patch size, got {self.patch_size}")
        layers, channels = [], in_chans
        width = max(embed_dim // 2 ** (stages - 1), 16) if stages else embed_dim
        for _ in range(stages):
            layers += [nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels, width = width, width * 2
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


@register_model
def vit_convstem_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A DeiT-Tiny-style ViT with a conv stem; defaults sized for 28x28 inputs (49 tokens)."""
    if pretrained:
        raise ValueError("vit_convstem_tiny has no pretrained weights")
    args = dict(
        img_size=28,
        patch_size=4,
        embed_dim=64,
        depth=4,
        num_heads=2,
        mlp_ratio=2.0,
        class_token=False,
        global_pool="avg",
        embed_layer=ConvStemPatchEmbed,
    )
    return VisionTransformer(**{**args, **_timm_args(kwargs)})


def _timm_args(kwargs: dict) -> dict:
    # timm's factory passes its pretrained-config bookkeeping; the models registered here have none to use
    return {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}


@register_model
def swin_convstem_tiny(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """A two-stage Swin with a conv stem; defaults sized for 28x28 inputs (14x14 tokens, 7x7 windows)."""
    if pretrained:
        raise ValueError("swin_convstem_tiny has no pretrained weights")
    args = dict(
        img_size=28,
        patch_size=2,
        window_size=7,
        embed_dim=48,
        depths=(2, 2),
        num_heads=(2, 4),
        embed_layer=ConvStemPatchEmbed,
    )
    return SwinTransformer(**{**args, **_timm_args(kwargs)})


def create_model(
    arch: str,
    *,
    num_classes: int,
    in_chans: int,
    kwargs: dict | None = None,
    pretrained: bool = False,
    zero_init_head: bool = False,
) -> nn.Module:
    """Build any timm model by registry name, sized for the dataset.

    With `pretrained`, timm fetches the weights (from its cache or the Hugging Face hub) and adapts
    the stem to `in_chans`; when they cannot be had the error says so instead of silently training
    from scratch. `zero_init_head` starts the classifier at zero: models whose pooled features are
    large at small inputs (MobileNetV2 pools a 1x1 map at 28x28) otherwise begin with logits of
    standard deviation ~5 and a loss near 6.5, and train slowly and unstably.
    """
    if arch not in timm.list_models():
        raise ValueError(f"unknown timm architecture {arch!r} (config key models.<name>.arch)")
    kwargs = kwargs or {}
    if not pretrained:
        model = timm.create_model(arch, num_classes=num_classes, in_chans=in_chans, **kwargs)
    else:
        try:
            model = timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
        except Exception as err:  # hub, network and missing-weight errors come in many types
            raise RuntimeError(
                f"could not load pretrained weights for {arch!r} (config key models.<name>.pretrained): "
                f"{type(err).__name__}: {err}. Set pretrained: false to train from scratch, or make "
                "the weights reachable (network access or a populated Hugging Face cache)."
            ) from err
    if zero_init_head:
        head = model.get_classifier()
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_threads(threads: int) -> None:
    """Use exactly the cores Snakemake gave the job; flush denormals (they slow CPU math tenfold)."""
    torch.set_num_threads(max(1, threads))
    torch.set_flush_denormal(True)
