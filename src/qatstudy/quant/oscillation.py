"""Weight-oscillation tracking during QAT, and iterative weight freezing (Nagel et al., ICML 2022).

A weight oscillates when its integer value changes direction between updates (up then down, or down then up); per
weight, the oscillation frequency is an exponential moving average of that event, and a layer's oscillating share
is the fraction of its weights whose frequency exceeds a threshold. Two integers are tracked, giving two measures:

- `integer` (Nagel et al.'s definition): w_int = clamp(round(w / s)) on the current step size s, against the
  previous update's. A learned step that moves shifts every bin edge, so this also counts flips that the step size
  alone caused.
- `weight`: the change the weight's own update makes on the current grid, clamp(round(w_t / s_t)) against
  clamp(round(w_{t-1} / s_t)). Step-size jitter does not count. This is the measure the study reports as
  `oscillating_share`; the other is kept as `integer_flip_share`.

Freezing, as Nagel et al.'s reference code does it: once a weight's integer-flip frequency exceeds the freezing
threshold, its INTEGER is held at the rounded moving average of its integer value, for the rest of training: the
forward pass uses that integer times the current step (which still learns) and the latent weight gets no gradient.
Freezing starts after the first quarter of training, with a threshold that then follows a cosine from
`freeze_threshold` to `freeze_threshold_final`, and applies to layers whose weights have at most `freeze_max_bits`
bits (Nagel et al. freeze 3- and 4-bit weights; an 8-bit bin is so narrow that most weights flip across an edge).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .modules import quant_modules

FREEZE_START = 0.25  # share of training before freezing starts (Nagel et al.'s anneal start)


def freeze_threshold_at(progress: float, start: float, final: float) -> float | None:
    """The freezing threshold at `progress` (0 .. 1 of training): None (no freezing) before FREEZE_START, then a
    cosine from `start` to `final`."""
    if progress < FREEZE_START:
        return None
    t = min((progress - FREEZE_START) / (1 - FREEZE_START), 1.0)
    return final + (start - final) * (1 + math.cos(math.pi * t)) / 2


class OscillationTracker:
    """Per layer: the previous integer and latent weights, each measure's last direction of change and frequency,
    and, when freezing, the moving average of each integer, the frozen mask and the held integers.

    Integers and directions are kept as int16 / int8 and the update avoids `torch.where` where it can: the tracker
    runs after every optimizer step over every weight, and on CPU float `where` and bool masks cost several times an
    integer add.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        momentum: float = 0.99,
        threshold: float = 0.01,
        freeze_threshold: float | None = None,
        freeze_threshold_final: float | None = None,
        freeze_max_bits: int = 4,
    ):
        if not 0 < momentum < 1:
            raise ValueError(f"oscillation momentum must be in (0, 1), got {momentum}")
        self.layers = dict(quant_modules(model))
        self.momentum, self.threshold = momentum, threshold
        self.freeze_threshold = freeze_threshold
        self.freeze_threshold_final = freeze_threshold if freeze_threshold_final is None else freeze_threshold_final
        self.freezing = {
            name
            for name, layer in self.layers.items()
            if freeze_threshold is not None and layer.weight_quantizer.bits <= freeze_max_bits
        }
        self.state = {name: self._initial_state(name, layer) for name, layer in self.layers.items()}

    @staticmethod
    @torch.no_grad()
    def integer_weights(layer, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The integers of `weight` (default: the layer's) on the layer's current step."""
        weight = layer.weight if weight is None else weight
        return layer.weight_quantizer.to_integer(weight).to(torch.int16)  # 8-bit integers and their differences fit

    def _initial_state(self, name: str, layer) -> dict[str, torch.Tensor]:
        w_int = self.integer_weights(layer)
        zeros = torch.zeros_like(w_int, dtype=torch.float32)
        state = {
            "previous": w_int,
            "previous_weight": layer.weight.detach().clone(),
            "integer_direction": torch.zeros_like(w_int, dtype=torch.int8),
            "integer_frequency": zeros.clone(),
            "weight_direction": torch.zeros_like(w_int, dtype=torch.int8),
            "weight_frequency": zeros.clone(),
        }
        if name in self.freezing:
            state |= {
                "average": zeros.clone(),
                "averaging": torch.tensor(False),
                "frozen": torch.zeros_like(w_int, dtype=torch.bool),
                "target": zeros.clone(),
            }
        return state

    def _flip(self, s: dict, measure: str, change: torch.Tensor) -> None:
        """Count a change of direction of `measure`'s integer (`change`: -1, 0 or +1 per weight)."""
        flipped = torch.lt(change * s[f"{measure}_direction"], 0, out=torch.empty_like(s[f"{measure}_frequency"]))
        s[f"{measure}_frequency"].lerp_(flipped, 1 - self.momentum)
        s[f"{measure}_direction"].mul_(1 - change.abs()).add_(change)  # the last non-zero change

    @torch.no_grad()
    def update(self, progress: float = 0.0) -> None:
        """Call after every optimizer step; `progress` is the share of training done (the freezing schedule)."""
        threshold = (
            freeze_threshold_at(progress, self.freeze_threshold, self.freeze_threshold_final) if self.freezing else None
        )
        for name, layer in self.layers.items():
            s = self.state[name]
            w_int = self.integer_weights(layer)
            moved = self.integer_weights(layer, s["previous_weight"])  # the previous weight on the current grid
            if "frozen" in s and s["frozen"].any():  # a held integer neither moves nor flips
                target = s["target"].to(torch.int16)
                w_int = torch.where(s["frozen"], target, w_int)
                moved = torch.where(s["frozen"], target, moved)
            self._flip(s, "integer", torch.sign(w_int - s["previous"]).to(torch.int8))
            self._flip(s, "weight", torch.sign(w_int - moved).to(torch.int8))
            if threshold is not None and name in self.freezing:
                self._freeze(layer, s, w_int, threshold)
            s["previous"] = w_int
            s["previous_weight"].copy_(layer.weight)

    def _freeze(self, layer, s: dict[str, torch.Tensor], w_int: torch.Tensor, threshold: float) -> None:
        """Freeze the weights whose integer-flip frequency passes `threshold` at their rounded average integer,
        then update the average (from the first step freezing is on, as Nagel et al.'s reference code does)."""
        if not s["averaging"]:
            s["average"].copy_(w_int)
            s["averaging"].fill_(True)
        newly = (s["integer_frequency"] > threshold) & ~s["frozen"]
        if newly.any():
            q = layer.weight_quantizer
            s["target"] = torch.where(newly, torch.clamp(torch.round(s["average"]), q.qmin, q.qmax), s["target"])
            s["frozen"] |= newly
            q.hold(s["frozen"], s["target"])
        s["average"].lerp_(w_int.float(), 1 - self.momentum)

    @torch.no_grad()
    def write_held(self) -> None:
        """Write every held integer into its latent weight (integer times the current step), so that the model's
        weights alone, without the hold (a checkpoint, an export), compute what the held model computes."""
        for name, layer in self.layers.items():
            s = self.state[name]
            if "frozen" in s and s["frozen"].any():
                q = layer.weight_quantizer
                layer.weight.copy_(torch.where(s["frozen"], s["target"] * q.step_like(layer.weight), layer.weight))

    def release(self) -> None:
        """Drop every hold (after write_held, the weights carry the held integers)."""
        for layer in self.layers.values():
            layer.weight_quantizer.hold(None, None)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per layer: the share of weights oscillating (weight measure), of integer flips (Nagel et al.'s measure,
        step-size jitter included) and of weights frozen."""
        return {
            name: {
                "oscillating": float((s["weight_frequency"] > self.threshold).float().mean()),
                "integer_flips": float((s["integer_frequency"] > self.threshold).float().mean()),
                "frozen": float(s["frozen"].float().mean()) if "frozen" in s else 0.0,
            }
            for name, s in self.state.items()
        }

    def state_dict(self) -> dict:
        return {name: {k: v.clone() for k, v in s.items()} for name, s in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {
            name: {k: state[name][k].to(v.dtype).clone() for k, v in self.state[name].items()} for name in self.state
        }
        for name in self.freezing:
            s = self.state[name]
            if s["frozen"].any():
                self.layers[name].weight_quantizer.hold(s["frozen"], s["target"])
