"""Quantized drop-in layers and the one function that wraps a model with them.

Wrapping swaps the class of each nn.Conv2d / nn.Linear in place (as NVIDIA ModelOpt does), so
parameter names stay unchanged and an FP32 checkpoint loads into the wrapped model directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from ..labels import bit_tag, parse_bit_tag
from .attention import quantize_attention
from .quantizer import LSQQuantizer


@dataclass(frozen=True)
class QuantScheme:
    """How one model is quantized.

    `w_bits` / `a_bits`: weight and activation bit-widths. Weights are signed, per output channel
    (or per tensor); activations per tensor, symmetric (signedness from calibration) or, with
    `act_asymmetric`, LSQ+ with a learned offset. `first_last_bits`, when set, gives the first
    layer (stem / patch embedding) and the classifier head their own bit-width: the
    module-dependent scheme, against the uniform one. `quantize_attention` also quantizes ViT
    attention internals (Q, K, V, attention probabilities), at `attention_bits` if set, else at
    `a_bits`. `residual_bits`, when set, quantizes the shortcut input of every ResNet block's residual add
    at that bit-width, so that TensorRT can fuse the add into the convolution before it. `depthwise_input_bits`,
    when set, gives the input of every depthwise convolution its own bit-width: a depthwise filter sums only the
    9 values of one channel, so 4-bit rounding noise there is not averaged out as it is across channels.
    """

    w_bits: int
    a_bits: int
    weight_per_channel: bool = True
    act_asymmetric: bool = False
    first_last_bits: int | None = None
    quantize_attention: bool = False
    attention_bits: int | None = None
    residual_bits: int | None = None
    depthwise_input_bits: int | None = None

    def __post_init__(self):
        for name in ("w_bits", "a_bits", "first_last_bits", "attention_bits", "residual_bits", "depthwise_input_bits"):
            bits = getattr(self, name)
            if bits is not None and not 2 <= bits <= 8:
                raise ValueError(f"{name} must be between 2 and 8, got {bits}")

    @property
    def tag(self) -> str:
        return bit_tag(self.w_bits, self.a_bits)

    @classmethod
    def from_tag(cls, tag: str, **options) -> QuantScheme:
        """`w4a8` -> QuantScheme(4, 8); `options` set the other fields."""
        return cls(*parse_bit_tag(tag), **options)

    def for_layer(self, is_first_or_last: bool, is_depthwise: bool = False) -> QuantScheme:
        if is_first_or_last and self.first_last_bits is not None:
            return replace(self, w_bits=self.first_last_bits, a_bits=self.first_last_bits)
        if is_depthwise and self.depthwise_input_bits is not None:
            return replace(self, a_bits=self.depthwise_input_bits)
        return self


class QuantMixin:
    """Adds a weight quantizer (per output channel) and an input quantizer (per tensor)."""

    weight_quantizer: LSQQuantizer
    input_quantizer: LSQQuantizer

    def _setup_quantizers(self, scheme: QuantScheme) -> None:
        if scheme.weight_per_channel:
            self.weight_quantizer = LSQQuantizer(scheme.w_bits, channel_axis=0, num_channels=self.weight.shape[0])
        else:
            self.weight_quantizer = LSQQuantizer(scheme.w_bits)
        # Signedness of a symmetric input quantizer is decided by calibration (unsigned after ReLU).
        self.input_quantizer = LSQQuantizer(scheme.a_bits, asymmetric=scheme.act_asymmetric)


class QuantConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_quantizer(self.weight)
        data = self.input_quantizer.quantize_data(x)
        if data is None:
            return self._conv_forward(self.input_quantizer(x), weight, self.bias)
        # The network's input needs no gradient, only its quantizer's step does. Convolution is linear, so
        # that gradient, sum(g * conv_transpose(g_out) * slope), equals sum(g_out * conv(slope)): one forward
        # conv instead of the backward-data pass over the input images, which on CPU costs more than the
        # rest of the stem (ResNet-18's 7x7 stem on one channel: 12 ms of a 133 ms training step).
        x_hat, step_slope, step_delta = data
        step_term = self._conv_forward(step_slope, weight.detach(), None) * step_delta  # value 0
        return self._conv_forward(x_hat, weight, self.bias) + step_term


class QuantLinear(QuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


_QUANT_CLASS = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def quantize_model(model: nn.Module, scheme: QuantScheme, names: Collection[str] | None = None) -> nn.Module:
    """Wrap every Conv2d and Linear of `model` (in place) with LSQ fake quantization.

    The first and last layers in module order are the stem (or patch embedding) and the
    classifier head in every timm model; `scheme.first_last_bits` applies to them, and
    `scheme.depthwise_input_bits` to the other depthwise convolutions' inputs. `names`, when
    given, wraps only the layers (and, with `scheme.quantize_attention`, the attention modules)
    of those module names; the rest stay float.
    """
    layers = quantizable_layers(model)
    if not layers:
        raise ValueError("model has no Conv2d or Linear layer to quantize")
    if names is not None:
        names = set(names)
        unknown = names - {name for name, _ in model.named_modules()}
        if unknown:
            raise ValueError(f"model has no module named {sorted(unknown)}")
    if scheme.quantize_attention:
        quantize_attention(model, scheme.attention_bits or scheme.a_bits, names)
    if scheme.residual_bits is not None and names is None:
        quantize_residuals(model, scheme.residual_bits)
    for i, (name, module) in enumerate(layers):
        if names is not None and name not in names:
            continue
        module.__class__ = _QUANT_CLASS[type(module)]
        module._setup_quantizers(scheme.for_layer(i in (0, len(layers) - 1), is_depthwise(module)))
        # new quantizer parameters must live where the layer lives
        module.to(module.weight.device)
    return model


def quantize_residuals(model: nn.Module, bits: int) -> None:
    """Quantize the shortcut of every timm ResNet block (BasicBlock, Bottleneck) before its residual add.
    timm adds `downsample(shortcut)`, or the shortcut itself, to the block's output, so the quantizer
    goes into that hook: after the downsampling layers, or as the hook itself. Without it, the add's second input
    would be float and TensorRT could not run the add inside the preceding INT8 convolution (NVIDIA's ResNet QAT
    recipe quantizes it the same way, at 8 bits). The quantizer stays signed even after a ReLU: TensorRT's INT8
    holds a signed 8-bit range exactly, an unsigned one only at half resolution."""
    for block in model.modules():
        if not isinstance(block, (BasicBlock, Bottleneck)):
            continue
        quantizer = LSQQuantizer(bits, sign_from_data=False).to(block.conv1.weight.device)
        if block.downsample is None:
            block.downsample = quantizer
        else:  # timm's downsampling is a Sequential: its parameter names stay as they were
            block.downsample = nn.Sequential(*block.downsample, quantizer)


def is_depthwise(layer: nn.Module) -> bool:
    """A convolution with one filter group per input channel (MobileNet's 3x3 spatial filters)."""
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The float Conv2d and Linear layers (by name, in module order) that quantize_model wraps."""
    return [(name, m) for name, m in model.named_modules() if type(m) in _QUANT_CLASS]


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
    (biases, norms, embeddings, activation steps and offsets) stays FP32.
    """
    steps = {id(p) for _, q in quantizers(model) for p in q.parameters()}  # steps and offsets
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
