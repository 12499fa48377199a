"""Learned-step-size (LSQ) fake quantizer (Esser et al., ICLR 2020).

One module quantizes one tensor: weights per output channel, activations per tensor. The step
size is a learned parameter; its gradient is scaled by 1/sqrt(numel_per_step * q_max) as LSQ
prescribes so that step sizes and weights learn at comparable rates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even, as ONNX QuantizeLinear) with a straight-through gradient."""
    return (torch.round(x) - x).detach() + x


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass, gradient multiplied by `factor` in the backward pass."""
    scaled = x * factor
    return x.detach() + (scaled - scaled.detach())  # exactly x forward (no rounding), factor backward


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class LSQQuantizer(nn.Module):
    """Symmetric LSQ fake quantizer with a learned step size.

    `channel_axis=None` gives one step for the whole tensor; an int gives one step per slice
    along that axis. Activation quantizers decide at calibration whether the observed input is
    non-negative (then unsigned, which doubles the resolution after ReLU).
    """

    def __init__(self, bits: int, *, signed: bool = True, channel_axis: int | None = None, num_channels: int = 1):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"bit-width must be between 2 and 8, got {bits}")
        self.bits = bits
        self.channel_axis = channel_axis
        # a buffer, not a Python attribute, so checkpoints keep what calibration decided
        self.register_buffer("is_signed", torch.tensor(signed))
        self.step = nn.Parameter(torch.ones(num_channels if channel_axis is not None else 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.export_mode = False  # set by `quant.export_mode()`: ONNX-exportable Q/DQ ops

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, self.signed)[1]

    @property
    def signed(self) -> bool:
        return bool(self.is_signed)

    @signed.setter
    def signed(self, value: bool) -> None:
        self.is_signed.fill_(bool(value))

    def extra_repr(self) -> str:
        kind = f"per-channel(axis={self.channel_axis})" if self.channel_axis is not None else "per-tensor"
        return f"bits={self.bits}, signed={self.signed}, {kind}"

    def _broadcast(self, step: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return step.reshape(())
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return step.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            raise RuntimeError("LSQQuantizer used before its step size was initialised (run calibration first)")
        if self.export_mode:
            return self._export_forward(x)
        per_step = x.numel() // self.step.numel()
        step = scale_grad(self.step, 1.0 / math.sqrt(per_step * self.qmax))
        step = self._broadcast(step, x)
        return round_ste(torch.clamp(x / step, self.qmin, self.qmax)) * step

    def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function written as clamp + 8-bit Q/DQ, which torch.onnx exports.

        Clamping to [qmin*step, qmax*step] before an int8/uint8 QuantizeLinear keeps the b-bit
        meaning inside the 8-bit container: the result equals the training-time forward pass.
        """
        step = self.step.detach()
        lo, hi = (-128, 127) if self.signed else (0, 255)
        if self.channel_axis is None:
            s = step.reshape(())
            x = torch.clamp(x, self.qmin * float(s), self.qmax * float(s))
            return torch.fake_quantize_per_tensor_affine(x, float(s), 0, lo, hi)
        s = self._broadcast(step, x)
        x = torch.minimum(torch.maximum(x, self.qmin * s), self.qmax * s)
        zero_point = torch.zeros(step.numel(), dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(x, step, zero_point, self.channel_axis, lo, hi)

    @torch.no_grad()
    def init_step(self, step: torch.Tensor) -> None:
        self.step.copy_(step.reshape(self.step.shape).clamp_min(1e-8))
        self.initialized.fill_(True)
