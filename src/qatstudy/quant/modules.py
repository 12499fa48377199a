"""Quantized drop-in layers and the one function that wraps a model with them.

Wrapping swaps the class of each nn.Conv2d / nn.Linear in place (as NVIDIA ModelOpt does), so
parameter names stay unchanged and an FP32 checkpoint loads into the wrapped model directly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import LSQQuantizer


@dataclass(frozen=True)
class QuantScheme:
    """Bit-widths of one quantized model: weights per output channel, activations per tensor."""

    w_bits: int
    a_bits: int

    @property
    def tag(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}"

    @classmethod
    def from_tag(cls, tag: str) -> "QuantScheme":
        match = re.fullmatch(r"w(\d+)a(\d+)", tag)
        if not match:
            raise ValueError(f"bit-width tag must look like 'w4a4', got {tag!r}")
        return cls(int(match[1]), int(match[2]))


class QuantMixin:
    """Adds a weight quantizer (per output channel) and an input quantizer (per tensor)."""

    weight_quantizer: LSQQuantizer
    input_quantizer: LSQQuantizer

    def _setup_quantizers(self, scheme: QuantScheme) -> None:
        out_channels = self.weight.shape[0]
        self.weight_quantizer = LSQQuantizer(scheme.w_bits, signed=True, channel_axis=0, num_channels=out_channels)
        # Signedness of the input is decided by calibration (unsigned after ReLU).
        self.input_quantizer = LSQQuantizer(scheme.a_bits, signed=True)


class QuantConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


_QUANT_CLASS = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quantize_model(model: nn.Module, scheme: QuantScheme) -> nn.Module:
    """Wrap every Conv2d and Linear of `model` (in place) with LSQ fake quantization."""
    for module in list(model.modules()):
        quant_class = _QUANT_CLASS.get(type(module))
        if quant_class is not None:
            module.__class__ = quant_class
            module._setup_quantizers(scheme)
            # new quantizer parameters must live where the layer lives
            module.to(module.weight.device)
    if not any(True for _ in quant_modules(model)):
        raise ValueError("model has no Conv2d or Linear layer to quantize")
    return model


def quant_modules(model: nn.Module) -> Iterator[tuple[str, QuantMixin]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantMixin):
            yield name, module


def quantizers(model: nn.Module) -> Iterator[tuple[str, LSQQuantizer]]:
    for name, module in model.named_modules():
        if isinstance(module, LSQQuantizer):
            yield name, module


@contextlib.contextmanager
def export_mode(model: nn.Module):
    """Within this block quantizers run as clamp + Q/DQ ops that torch.onnx can export."""
    qs = [q for _, q in quantizers(model)]
    for q in qs:
        q.export_mode = True
    try:
        yield model
    finally:
        for q in qs:
            q.export_mode = False


def model_size_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes to store the model as FP32, and packed with b-bit quantized weights.

    Quantized layers store b bits per weight plus one FP32 step per channel; everything else
    (biases, norms, embeddings, activation steps) stays FP32.
    """
    steps = {id(q.step) for _, q in quantizers(model)}
    weight_bits = {id(m.weight): m.weight_quantizer.bits for _, m in quant_modules(model)}
    fp32 = 0
    packed_bits = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if not tensor.is_floating_point():
            continue  # bookkeeping (BN batch counters, quantizer flags) is not part of the model
        if id(tensor) in steps:
            packed_bits += tensor.numel() * 32
            continue
        fp32 += tensor.numel() * 4
        packed_bits += tensor.numel() * weight_bits.get(id(tensor), 32)
    return {"fp32_bytes": fp32, "packed_bytes": (packed_bits + 7) // 8}
