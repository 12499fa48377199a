"""Weight-oscillation tracking during QAT, with optional freezing (Nagel et al., ICML 2022).

A latent weight oscillates when its integer value w_int = clamp(round(w / s)) changes direction
between updates (up then down, or down then up). Per weight, the oscillation frequency is an
exponential moving average of that event; a layer's oscillation share is the fraction of its
weights whose frequency exceeds a threshold. Freezing fixes a weight whose frequency exceeds the
freeze threshold at the rounded moving average of its integer value.
"""

from __future__ import annotations

import torch
from torch import nn

from .modules import quant_modules


class OscillationTracker:
    """Per layer: the previous integer weights, their last direction of change, the oscillation
    frequency and, when freezing, the moving average each frozen weight is pinned to.

    Integers and directions are kept as int16 / int8 and the update avoids `torch.where`: the tracker
    runs after every optimizer step over every weight, and on CPU float `where` and bool masks cost
    several times an integer add.
    """

    def __init__(self, model: nn.Module, *, momentum: float = 0.99, threshold: float = 0.01,
                 freeze_threshold: float | None = None):
        if not 0 < momentum < 1:
            raise ValueError(f"oscillation momentum must be in (0, 1), got {momentum}")
        self.layers = dict(quant_modules(model))
        self.momentum, self.threshold, self.freeze_threshold = momentum, threshold, freeze_threshold
        self.state = {name: self._initial_state(layer) for name, layer in self.layers.items()}

    @staticmethod
    @torch.no_grad()
    def integer_weights(layer) -> torch.Tensor:
        return layer.weight_quantizer.to_integer(layer.weight).to(torch.int16)  # 8-bit integers and their differences fit

    def _initial_state(self, layer) -> dict[str, torch.Tensor]:
        w_int = self.integer_weights(layer)
        state = {"previous": w_int, "direction": torch.zeros_like(w_int, dtype=torch.int8),
                 "frequency": torch.zeros_like(w_int, dtype=torch.float32)}
        if self.freeze_threshold is not None:
            state |= {"average": w_int.float(), "frozen": torch.zeros_like(w_int, dtype=torch.bool),
                      "target": torch.zeros_like(w_int, dtype=torch.float32)}
        return state

    @torch.no_grad()
    def update(self) -> None:
        """Call after every optimizer step."""
        m = self.momentum
        for name, layer in self.layers.items():
            s = self.state[name]
            w_int = self.integer_weights(layer)
            change = torch.sign(w_int - s["previous"]).to(torch.int8)  # -1, 0 or +1
            flipped = torch.lt(change * s["direction"], 0, out=torch.empty_like(s["frequency"]))  # as a float 0/1
            s["frequency"].lerp_(flipped, 1 - m)
            s["direction"].mul_(1 - change.abs()).add_(change)  # the last non-zero change
            if self.freeze_threshold is not None:
                w_int = self._freeze(layer, s, w_int)
            s["previous"] = w_int

    def _freeze(self, layer, s: dict[str, torch.Tensor], w_int: torch.Tensor) -> torch.Tensor:
        """Freeze newly oscillating weights, pin every frozen one; returns the integer weights after pinning."""
        m = self.momentum
        s["average"] = torch.where(s["frozen"], s["average"], m * s["average"] + (1 - m) * w_int)
        newly = (s["frequency"] > self.freeze_threshold) & ~s["frozen"]
        q = layer.weight_quantizer
        s["target"] = torch.where(newly, torch.clamp(torch.round(s["average"]), q.qmin, q.qmax), s["target"])
        s["frozen"] |= newly
        if not s["frozen"].any():
            return w_int
        # frozen weights sit on their target integer, whatever the optimizer did
        layer.weight.copy_(torch.where(s["frozen"], s["target"] * q.step_like(layer.weight), layer.weight))
        return self.integer_weights(layer)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per layer: share of oscillating weights and share frozen."""
        return {name: {"oscillating": float((s["frequency"] > self.threshold).float().mean()),
                       "frozen": float(s["frozen"].float().mean()) if "frozen" in s else 0.0}
                for name, s in self.state.items()}

    def state_dict(self) -> dict:
        return {name: {k: v.clone() for k, v in s.items()} for name, s in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        # a checkpoint of an earlier version may hold float integers and extra keys: keep this layout
        self.state = {name: {k: state[name][k].to(v.dtype).clone() for k, v in self.state[name].items()}
                      for name in self.state}
