"""Divergence caught when it happens: the training loop (qatstudy.train.fit) checks every step's loss, so that a run
whose loss blows up (`train.lr: 1000` reached a loss of 7e10) stops its job instead of publishing a model near
chance level.

The rule: a step's loss diverged when it is not finite (nan, inf), or when it exceeds
`DIVERGENCE_FACTOR` x max(the run's first loss, ln(number of classes)). ln(classes) is the cross-entropy of a
uniform guess, so the bound is never below ten times chance: a QAT run that starts from a trained model (loss ~0.3)
still has room for the spikes low bit-widths cause. On resume the first loss is the first step's after resuming.
"""

from __future__ import annotations

import math

DIVERGENCE_FACTOR = 10.0


class TrainingDiverged(RuntimeError):
    """The loss became non-finite or exploded; the message names the run, epoch, step and loss."""


class DivergenceCheck:
    """Call once per step with the step's loss; raises TrainingDiverged when it diverged (the module's rule)."""

    def __init__(self, desc: str, factor: float = DIVERGENCE_FACTOR):
        self.desc = desc  # the run: model and stage ("resnet fp32", "vit qat w4a4")
        self.factor = factor
        self.bound: float | None = None

    def __call__(self, loss: float, *, epoch: int, step: int, num_classes: int) -> None:
        """`epoch` and `step` count from 0 (the message counts from 1, as the progress bar does)."""
        where = f"{self.desc}: training diverged at epoch {epoch + 1}, step {step + 1}"
        if not math.isfinite(loss):
            raise TrainingDiverged(f"{where}: loss is {loss}. Lower the learning rate (train.lr / qat.lr).")
        if self.bound is None:
            self.bound = self.factor * max(loss, math.log(max(num_classes, 2)))
            return
        if loss > self.bound:
            raise TrainingDiverged(
                f"{where}: loss {loss:.4g} exceeds {self.factor:g} x max(first loss, ln(classes)) = "
                f"{self.bound:.4g}. Lower the learning rate (train.lr / qat.lr)."
            )
