"""Step-size initialisation: weights from their values, activations from a few batches.

Methods: `minmax` (step = max|x| / q_max), `percentile` (99.99th percentile of |x|), and `mse`
(the clipping range that minimises the squared quantization error, searched on a grid).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .modules import quant_modules, quantizers
from .quantizer import LSQQuantizer, integer_range, integer_range_of, signed_zero_point

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
_MAX_SAMPLES = 1 << 16  # activation values kept per quantizer; enough for a stable percentile
_MSE_GRID = torch.linspace(0.05, 1.0, 48)
_ASYMMETRIC_ROUNDS = 2  # coordinate-descent rounds over the two ends of an asymmetric range


def _fake_quant(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / step), qmin, qmax) * step


def init_step_size(x: torch.Tensor, bits: int, signed: bool, method: str) -> torch.Tensor:
    """Initial step size per row of `x` (shape [channels, values])."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    qmin, qmax = integer_range(bits, signed)
    absx = x.abs().float()
    amax = absx.amax(dim=1)
    if method == "minmax":
        return amax / qmax
    if method == "percentile":
        return torch.quantile(absx, 0.9999, dim=1) / qmax
    # mse: evaluate every candidate clipping range, keep the best per row
    steps = amax[None, :] * _MSE_GRID.to(x.device)[:, None] / qmax  # [grid, rows]
    errors = torch.stack(
        [((_fake_quant(x, s[:, None].clamp_min(1e-12), qmin, qmax) - x) ** 2).mean(dim=1) for s in steps]
    )
    return steps.gather(0, errors.argmin(dim=0, keepdim=True))[0]


def init_asymmetric_range(x: torch.Tensor, bits: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (step, offset) per row of `x` for an asymmetric (LSQ+) quantizer on [0, 2^b - 1]."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    qmax = 2**bits - 1
    x = x.float()
    if method == "percentile":
        lo, hi = torch.quantile(x, 1e-4, dim=1), torch.quantile(x, 1 - 1e-4, dim=1)
    else:
        lo, hi = x.amin(dim=1), x.amax(dim=1)
    if method != "mse":
        return ((hi - lo) / qmax).clamp_min(1e-8), lo

    # mse: clip each end in turn (coordinate descent), keeping the best (low, high) per row. Each end moves on its
    # own: a post-ReLU input needs its floor at exactly 0 while its long tail is clipped, which a range shrunk
    # symmetrically towards the mean cannot give (it lifted the floor and cost MobileNetV2 W8A4 45 PTQ points)
    def error(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        step = ((high - low) / qmax).clamp_min(1e-8)[:, None]
        return ((_fake_quant(x - low[:, None], step, 0, qmax) + low[:, None] - x) ** 2).mean(dim=1)

    best_lo, best_hi = lo.clone(), hi.clone()
    best_err = error(lo, hi)
    for _ in range(_ASYMMETRIC_ROUNDS):
        for clip_high in (True, False):
            fixed_lo, fixed_hi = best_lo.clone(), best_hi.clone()
            for alpha in _MSE_GRID:
                if clip_high:
                    low, high = fixed_lo, fixed_lo + alpha * (hi - fixed_lo)
                else:
                    low, high = fixed_hi - alpha * (fixed_hi - lo), fixed_hi
                err = error(low, high)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo, best_hi = torch.where(better, low, best_lo), torch.where(better, high, best_hi)
    return ((best_hi - best_lo) / qmax).clamp_min(1e-8), best_lo


def init_zero_point_range(
    x: torch.Tensor, bits: int, method: str, minimum: float | None = None
) -> tuple[torch.Tensor, int]:
    """Initial (step, integer zero point) for one row of activation values `x` ([1, values]), a sample of an input
    whose smallest value is `minimum` (default: the sample's).

    An input that is never negative gets zero point 0, the unsigned range. Otherwise, below 8 bits, the zero point
    is the calibrated asymmetric range's offset in steps, rounded (so an input that is mostly non-negative, such as
    GELU's output, keeps most of its levels above zero); with `mse`, the signed symmetric range competes, and the
    range with the smaller squared error wins. At 8 bits the choice is between the unsigned and the signed range
    only: TensorRT holds just zero point 0 in int8, and another 8-bit zero point would cost TensorRT's file a bit of
    resolution (qdq.trt_layout) for a gain that at 8 bits is negligible.
    """
    unsigned = (float(x.min()) if minimum is None else minimum) >= 0
    if unsigned or bits == 8:
        zero_point = 0 if unsigned else signed_zero_point(bits)
        return init_step_size(x, bits, not unsigned, method), zero_point
    levels = 2**bits - 1
    step, low = init_asymmetric_range(x, bits, method)
    candidates = [(step, int(torch.clamp(torch.round(-low / step), 0, levels)))]
    if method == "mse":
        candidates.append((init_step_size(x, bits, True, method), signed_zero_point(bits)))

    def error(candidate):
        step, zero_point = candidate
        return float(((_fake_quant(x, step, *integer_range_of(bits, zero_point)) - x) ** 2).mean())

    return min(candidates, key=error)


def init_quantizer(q: LSQQuantizer, rows: torch.Tensor, method: str) -> None:
    """Set `q`'s step (and offset) from sample values, one row per step size."""
    if q.asymmetric:
        q.init_step(*init_asymmetric_range(rows, q.bits, method))
    else:
        q.init_step(init_step_size(rows, q.bits, q.signed, method))


class _ActivationRecorder:
    """Keeps a bounded random sample of a quantizer's inputs and their minimum."""

    def __init__(self, generator: torch.Generator):
        self.samples: list[torch.Tensor] = []
        self.minimum = float("inf")
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1)
        self.minimum = min(self.minimum, float(x.min()))
        if x.numel() > _MAX_SAMPLES:
            x = x[torch.randint(0, x.numel(), (_MAX_SAMPLES,), generator=self.generator).to(x.device)]
        self.samples.append(x)

    def values(self) -> torch.Tensor:
        x = torch.cat(self.samples)
        if x.numel() > _MAX_SAMPLES:
            x = x[torch.randperm(x.numel(), generator=self.generator)[:_MAX_SAMPLES].to(x.device)]
        return x


def _ignore(_x: torch.Tensor) -> None:
    pass


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], method: str = "mse", seed: int = 0) -> int:
    """Initialise every quantizer's step size; returns the number of images seen.

    Weight quantizers start from their weights. Activation quantizers (layer inputs and, where
    wrapped, attention internals) start from values observed on the float model: while
    calibrating every quantizer passes its input through unchanged (the standard post-training
    calibration). A symmetric quantizer takes its zero point from the data (init_zero_point_range: unsigned where
    its input is never negative), unless it keeps the range it was built with (`sign_from_data` False).
    """
    weight_quantizers = {id(m.weight_quantizer): m for _, m in quant_modules(model)}
    generator = torch.Generator().manual_seed(seed)
    recorders = {}
    all_quantizers = [q for _, q in quantizers(model)]
    for q in all_quantizers:
        layer = weight_quantizers.get(id(q))
        if layer is not None:
            weight = layer.weight.detach()
            rows = weight.reshape(weight.shape[0], -1) if q.channel_axis is not None else weight.reshape(1, -1)
            init_quantizer(q, rows, method)
            q.observer = _ignore
        else:
            q.observer = recorders[q] = _ActivationRecorder(generator)
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += x.shape[0]
    finally:
        for q in all_quantizers:
            q.observer = None
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration needs at least one batch")
    for q, recorder in recorders.items():
        if not recorder.samples:
            raise RuntimeError("an activation quantizer saw no data during calibration (is it on the forward path?)")
        values = recorder.values()[None, :]
        if not q.asymmetric and q.sign_from_data:
            step, zero_point = init_zero_point_range(values, q.bits, method, recorder.minimum)
            q.set_zero_point(zero_point)
            q.init_step(step)
        else:
            init_quantizer(q, values, method)
    return seen


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of `model`."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running mean and variance as the plain average over `batches`, with the
    model quantizing as it now does; returns how many norms changed.

    Quantized activations have other statistics than the float ones the norms were trained on; at 4 bits and
    below that shift alone costs a MobileNetV2 10 points (Nagel et al. 2022 re-estimate them for the same reason).
    """
    norms = batchnorms(model)
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    try:
        seen = 0
        for x in batches:
            model(x)
            seen += x.shape[0]
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ValueError("batch-norm re-estimation needs at least one batch")
    return len(norms)
