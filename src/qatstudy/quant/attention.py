"""Quantized attention internals for timm's ViT and Swin blocks, without forking timm.

The attention modules' classes are swapped in place (as for Conv2d / Linear), and their forward
is timm's unfused path with four per-tensor quantizers added: Q (after scaling) and K, the inputs
of the score matmul; the softmax output (unsigned, in [0, 1]) and V, the inputs of the
attention-times-V matmul. Softmax itself, norms and GELU stay in float.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention
from torch import nn

from .quantizer import LSQQuantizer


class QuantAttentionMixin:
    q_quantizer: LSQQuantizer
    k_quantizer: LSQQuantizer
    v_quantizer: LSQQuantizer
    attn_quantizer: LSQQuantizer

    def _setup_attention_quantizers(self, bits: int) -> None:
        self.q_quantizer = LSQQuantizer(bits)
        self.k_quantizer = LSQQuantizer(bits)
        self.v_quantizer = LSQQuantizer(bits)
        self.attn_quantizer = LSQQuantizer(bits, signed=False)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, add_bias) -> torch.Tensor:
        scores = self.q_quantizer(q * self.scale) @ self.k_quantizer(k).transpose(-2, -1)
        probs = self.attn_quantizer(add_bias(scores).softmax(dim=-1))
        return self.attn_drop(probs) @ self.v_quantizer(v)


class QuantViTAttention(QuantAttentionMixin, Attention):
    """timm.layers.Attention (ViT, DeiT) with quantized Q, K, V and attention probabilities."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = self._attend(q, k, v, lambda s: maybe_add_mask(s, resolve_self_attn_mask(N, s, attn_mask, is_causal)))
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(QuantAttentionMixin, WindowAttention):
    """timm's Swin WindowAttention with quantized Q, K, V and attention probabilities."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

        def add_bias(scores: torch.Tensor) -> torch.Tensor:
            scores = scores + self._get_rel_pos_bias()
            if mask is not None:
                num_win = mask.shape[0]
                scores = scores.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
                scores = scores.view(-1, self.num_heads, N, N)
            return scores

        x = self._attend(q, k, v, add_bias)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))


_QUANT_ATTENTION = {Attention: QuantViTAttention, WindowAttention: QuantWindowAttention}


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The timm Attention / WindowAttention modules of `model` (by name) that quantize_attention swaps."""
    return [(name, m) for name, m in model.named_modules() if type(m) in _QUANT_ATTENTION]


def _named_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return "Attention" in name or name.endswith("Attn")


def _is_attention(module: nn.Module) -> bool:
    """Whether `module` is an attention module by timm's naming (Attention, WindowAttention, CaiT's TalkingHeadAttn
    and ClassAttn, ...) holding no other one (CaiT's LayerScaleBlockClassAttn is a block around a ClassAttn); the
    quantized classes are not."""
    return (
        _named_attention(module)
        and not isinstance(module, QuantAttentionMixin)
        and not any(_named_attention(m) for m in module.modules() if m is not module)
    )


def unsupported_attention(model: nn.Module, names: Collection[str] | None = None) -> list[tuple[str, str]]:
    """(module name, class name) of each attention module of `model` (or of those named in `names`) that
    quantize_attention cannot swap."""
    return [
        (name, type(m).__name__)
        for name, m in model.named_modules()
        if _is_attention(m) and type(m) not in _QUANT_ATTENTION and (names is None or name in names)
    ]


def quantize_attention(model: nn.Module, bits: int, names: Collection[str] | None = None) -> int:
    """Swap every timm Attention / WindowAttention of `model` in place, or only those named in
    `names`; returns how many. An attention class it does not know raises a ValueError naming it, before anything
    is swapped: quantizing nothing there would silently train another scheme than the one configured."""
    if unknown := unsupported_attention(model, names):
        classes = sorted({cls for _, cls in unknown})
        raise ValueError(
            f"quant.quantize_attention is set, but {type(model).__name__} has attention modules of class "
            f"{', '.join(classes)} (first: {unknown[0][0]}) whose internals qatstudy.quant cannot quantize; it "
            f"quantizes {', '.join(sorted(c.__name__ for c in _QUANT_ATTENTION))}. Unset quant.quantize_attention "
            "for this model"
        )
    count = 0
    for name, module in attention_modules(model):
        if names is not None and name not in names:
            continue
        module.__class__ = _QUANT_ATTENTION[type(module)]
        module._setup_attention_quantizers(bits)
        module.to(module.qkv.weight.device)
        count += 1
    return count
