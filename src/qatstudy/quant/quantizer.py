"""Learned-step-size (LSQ) fake quantizer (Esser et al., ICLR 2020), with the LSQ+ offset.

One module quantizes one tensor, per channel or per tensor. The step size is a learned
parameter; its gradient is scaled by 1/sqrt(numel_per_step * q_max) as LSQ prescribes so that
step sizes and weights learn at comparable rates. The b-bit integers run from -z to 2^b - 1 - z for an
integer zero point z: z = 2^(b-1) is the signed symmetric range, z = 0 the unsigned one, and an activation's
calibration may choose any z in between (asymmetric uniform quantization with an integer zero point, as
onnxruntime's uint8 activations: Jacob et al., CVPR 2018), so an input that is mostly but not entirely
non-negative, such as GELU's output, gets the resolution a ReLU output gets. The asymmetric variant instead adds
LSQ+'s learned real offset beta (Bhalgat et al., CVPR-W 2020): x_hat = s * clamp(round((x - beta) / s)) + beta.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _sum_of_products(a: torch.Tensor, b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum of a * b over the elements that share one entry of the broadcast `shape`."""
    if shape.numel() == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)  # no full-size product in between
    return (a * b).sum_to_size(shape)


def _fake_quantize(x, step, offset, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_hat, the float mask of values inside the clamp range, and d x_hat / d step per element."""
    v = x / step if offset is None else (x - offset) / step
    clamped = v.clamp(qmin, qmax)
    inside = torch.eq(v, clamped, out=torch.empty_like(v))  # a float mask: cheaper to multiply than bool
    q = clamped.round_()  # rounding after clamping to integer bounds equals clamping after rounding
    step_slope = torch.addcmul(q, v, inside, value=-1)  # q - v * inside
    out = q.mul_(step)  # q itself is not needed in the backward pass
    return (out if offset is None else out.add_(offset)), inside, step_slope


class _LSQFakeQuantize(torch.autograd.Function):
    """x_hat = s * clamp(round((x - beta) / s), qmin, qmax) + beta, with LSQ's gradients in one node.

    Autograd through the composed ops (divide, clamp, straight-through round, multiply) runs a `where`
    for the clamp's mask and several full-size products, which on CPU cost more than the conv they
    feed. Here the backward is one mask multiply and one reduction per learned tensor. With
    v = (x - beta) / s, q the clamped rounded v and `inside` = [qmin <= v <= qmax]:
        dx = g * inside,   ds = f * sum(g * (q - v * inside)),   dbeta = f * sum(g * (1 - inside))
    where f is LSQ's gradient scale and the sums run over the elements that share a step.
    """

    @staticmethod
    def forward(ctx, x, step, offset, qmin: int, qmax: int, grad_factor: float):
        out, inside, step_slope = _fake_quantize(x, step, offset, qmin, qmax)
        ctx.save_for_backward(inside, step_slope)
        ctx.grad_factor, ctx.has_offset, ctx.step_shape = grad_factor, offset is not None, step.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        inside, step_slope = ctx.saved_tensors
        grad_x = grad * inside
        grad_step = _sum_of_products(grad, step_slope, ctx.step_shape) * ctx.grad_factor
        grad_offset = (grad - grad_x).sum_to_size(ctx.step_shape) * ctx.grad_factor if ctx.has_offset else None
        return grad_x, grad_step, grad_offset, None, None, None


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    return integer_range_of(bits, signed_zero_point(bits) if signed else 0)


def signed_zero_point(bits: int) -> int:
    """The zero point of the signed symmetric b-bit range [-2^(b-1), 2^(b-1) - 1]."""
    return 2 ** (bits - 1)


def integer_range_of(bits: int, zero_point: int) -> tuple[int, int]:
    """The b-bit integers around `zero_point`: [-zero_point, 2^b - 1 - zero_point]."""
    return -zero_point, 2**bits - 1 - zero_point


class LSQQuantizer(nn.Module):
    """LSQ fake quantizer with a learned step size (and, if asymmetric, a learned offset).

    `channel_axis=None` gives one step for the whole tensor; an int gives one step per slice
    along that axis. Activation quantizers take their zero point from calibration (0 for an input that is never
    negative, which doubles the resolution after ReLU; between 0 and 2^(b-1) for a mostly non-negative one), unless
    `sign_from_data` is False (they then keep the range they were built with). Asymmetric (LSQ+) quantizers use the
    unsigned range [0, 2^b - 1] shifted by the learned offset.
    """

    def __init__(
        self,
        bits: int,
        *,
        signed: bool = True,
        channel_axis: int | None = None,
        num_channels: int = 1,
        asymmetric: bool = False,
        sign_from_data: bool = True,
    ):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"bit-width must be between 2 and 8, got {bits}")
        self.bits = bits
        self.channel_axis = channel_axis
        # a buffer, not a Python attribute, so checkpoints keep what calibration decided
        self.register_buffer("zero_point", torch.tensor(signed_zero_point(bits) if signed and not asymmetric else 0))
        self.step = nn.Parameter(torch.ones(num_channels if channel_axis is not None else 1))
        # only asymmetric quantizers own an offset, so symmetric checkpoints keep their keys
        self.offset = nn.Parameter(torch.zeros_like(self.step)) if asymmetric else None
        self.register_buffer("initialized", torch.tensor(False))
        self.sign_from_data = sign_from_data  # read by calibration only, so not part of a checkpoint
        self.export_mode = False  # set by `quant.export_mode()`: ONNX-exportable Q/DQ ops
        self.observer = None  # set by calibration: sees the input, which passes through unchanged
        # set by oscillation freezing (hold): values whose integer is held, and those integers; not checkpointed,
        # since freezing ends by writing the held integers into the weights (OscillationTracker.bake)
        self.held_mask: torch.Tensor | None = None
        self.held_integers: torch.Tensor | None = None

    @property
    def asymmetric(self) -> bool:
        return self.offset is not None

    @property
    def qmin(self) -> int:
        return integer_range_of(self.bits, int(self.zero_point))[0]

    @property
    def qmax(self) -> int:
        return integer_range_of(self.bits, int(self.zero_point))[1]

    @property
    def signed(self) -> bool:
        """Whether the range has negative integers (zero point above 0)."""
        return int(self.zero_point) > 0

    @signed.setter
    def signed(self, value: bool) -> None:
        self.set_zero_point(signed_zero_point(self.bits) if value else 0)

    def set_zero_point(self, zero_point: int) -> None:
        if zero_point and self.asymmetric:
            raise ValueError("an asymmetric quantizer uses the unsigned range; its offset handles the sign")
        if not 0 <= zero_point <= 2**self.bits - 1:
            raise ValueError(f"a {self.bits}-bit zero point must be in [0, {2**self.bits - 1}], got {zero_point}")
        self.zero_point.fill_(int(zero_point))

    @property
    def step_levels(self) -> int:
        """The integers above zero (at least 1): LSQ's Q_P, which scales the step's gradient and learning rate."""
        return max(self.qmax, 1)

    def extra_repr(self) -> str:
        kind = f"per-channel(axis={self.channel_axis})" if self.channel_axis is not None else "per-tensor"
        return f"bits={self.bits}, zero_point={int(self.zero_point)}, asymmetric={self.asymmetric}, {kind}"

    def _broadcast(self, step: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return step.reshape(())
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return step.reshape(shape)

    @staticmethod
    def _magnitude(step: torch.Tensor) -> torch.Tensor:
        # Adam moves a parameter by about lr per update whatever its gradient, which at 8 bits can
        # exceed a per-channel step and push it through zero; the step's magnitude is what quantizes
        # (a negative scale would be invalid in ONNX QuantizeLinear)
        return step.abs().clamp_min(1e-8)

    def step_like(self, x: torch.Tensor) -> torch.Tensor:
        """The (detached) step size broadcast against `x`."""
        return self._broadcast(self._magnitude(self.step.detach()), x)

    def to_integer(self, x: torch.Tensor) -> torch.Tensor:
        """The integer each value of `x` quantizes to (symmetric quantizers: weights)."""
        return (x / self.step_like(x)).round_().clamp_(self.qmin, self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x)
            return x
        if not bool(self.initialized):
            raise RuntimeError("LSQQuantizer used before its step size was initialised (run calibration first)")
        if self.export_mode:
            return self._export_forward(x)
        step = self._broadcast(self._magnitude(self.step), x)
        offset = None if self.offset is None else self._broadcast(self.offset, x)
        out = _LSQFakeQuantize.apply(x, step, offset, self.qmin, self.qmax, self._grad_factor(x))
        if self.held_mask is None:
            return out
        # a held value is its integer times the current step: no gradient to x, d/ds = the integer (LSQ-scaled)
        scaled_step = step.detach() + (step - step.detach()) * self._grad_factor(x)
        return torch.where(self.held_mask, self.held_integers * scaled_step, out)

    def hold(self, mask: torch.Tensor | None, integers: torch.Tensor | None) -> None:
        """Hold the values where `mask` is set at `integers` (times the current step) from now on; None releases."""
        self.held_mask, self.held_integers = mask, integers

    def _grad_factor(self, x: torch.Tensor) -> float:
        """LSQ's step-gradient scale 1 / sqrt(values per step * qmax)."""
        return 1.0 / math.sqrt(x.numel() // self.step.numel() * self.step_levels)

    def quantize_data(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For an input that needs no gradient (the network's input data): the quantized `x` (no
        gradient), d x_hat / d step per element, and a zero-valued scalar whose gradient reaches the
        step with LSQ's scale. None where the plain forward pass applies (calibration, export, an
        offset or per-channel step to learn, or no gradient wanted)."""
        if (
            x.requires_grad
            or not torch.is_grad_enabled()
            or not self.step.requires_grad
            or self.observer is not None
            or self.export_mode
            or self.offset is not None
            or self.channel_axis is not None
            or not bool(self.initialized)
        ):
            return None
        step = self._magnitude(self.step).reshape(())
        with torch.no_grad():
            x_hat, _, step_slope = _fake_quantize(x, step, None, self.qmin, self.qmax)
        return x_hat, step_slope, (step - step.detach()) * self._grad_factor(x)

    def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function written as clamp + 8-bit Q/DQ, which torch.onnx exports.

        Clamping to [qmin*step, qmax*step] before an int8/uint8 QuantizeLinear keeps the b-bit
        meaning inside the 8-bit container: the result equals the training-time forward pass. The container is
        uint8 with zero point 0 for an unsigned range, int8 with zero point 0 for a range that fits it (the signed
        one, and any zero point below 8 bits), else uint8 with the quantizer's zero point.
        """
        step = self._magnitude(self.step.detach())
        offset = None if self.offset is None else self._broadcast(self.offset.detach(), x)
        if offset is not None:
            x = x - offset  # the learned offset is real-valued: shift, quantize symmetrically, shift back
        zero = 0
        if self.qmin == 0:
            lo, hi = 0, 255
        elif -128 <= self.qmin and self.qmax <= 127:
            lo, hi = -128, 127
        else:
            lo, hi, zero = 0, 255, int(self.zero_point)
        if self.channel_axis is None:
            s = step.reshape(())
            x = torch.clamp(x, self.qmin * float(s), self.qmax * float(s))
            x = torch.fake_quantize_per_tensor_affine(x, float(s), zero, lo, hi)
        else:
            s = self._broadcast(step, x)
            x = torch.minimum(torch.maximum(x, self.qmin * s), self.qmax * s)
            zero_point = torch.zeros(step.numel(), dtype=torch.int32)
            x = torch.fake_quantize_per_channel_affine(x, step, zero_point, self.channel_axis, lo, hi)
        return x if offset is None else x + offset

    @torch.no_grad()
    def init_step(self, step: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        self.step.copy_(step.reshape(self.step.shape).clamp_min(1e-8))
        if self.offset is not None:
            self.offset.copy_(torch.zeros_like(self.offset) if offset is None else offset.reshape(self.offset.shape))
        self.initialized.fill_(True)
