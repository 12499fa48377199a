"""QAT training additions that fit() consults: distillation, the bin regularizer, oscillation tracking.

- Knowledge distillation from the FP32 model (Hinton et al. 2015): KL divergence between the
  teacher's and the student's temperature-softened predictions, times T^2, mixed with the label
  loss by `weight`. With `crops` > 1 each image is seen in several augmented crops per step, as
  in the multi-crop distillation of Huang et al. (TMLR 2024).
- Bin regularizer (variation-aware regularization): the mean squared distance of each latent
  weight from the centre of its quantization bin, in units of the step size, weighted on a cosine
  ramp from 0 at the start of QAT to `weight` at the end, so weights settle into their bins and
  stop oscillating late in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quant import quant_modules
from .quant.oscillation import OscillationTracker


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    log_target=True, reduction="batchmean") * temperature**2


def bin_regularizer(model: nn.Module) -> torch.Tensor:
    terms = []
    for _, layer in quant_modules(model):
        q = layer.weight_quantizer
        scaled = layer.weight / q.step_like(layer.weight)
        terms.append(((scaled - q.to_integer(layer.weight.detach())) ** 2).mean())
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class QATSettings:
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    crops: int = 1
    regularizer_weight: float = 0.0
    oscillation_momentum: float = 0.99
    oscillation_threshold: float = 0.01
    freeze_threshold: float | None = None


class QATObjective:
    """The loss and the per-step bookkeeping of a QAT run."""

    def __init__(self, model: nn.Module, settings: QATSettings, teacher: nn.Module | None = None):
        if settings.distill_weight > 0 and teacher is None:
            raise ValueError("distillation needs a teacher model")
        self.model, self.settings = model, settings
        self.teacher = teacher.eval() if teacher is not None and settings.distill_weight > 0 else None
        self.tracker = OscillationTracker(model, momentum=settings.oscillation_momentum,
                                          threshold=settings.oscillation_threshold,
                                          freeze_threshold=settings.freeze_threshold)

    @property
    def crops(self) -> int:
        return self.settings.crops

    def regularizer_weight(self, progress: float) -> float:
        return self.settings.regularizer_weight * (1 - math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2

    def loss(self, logits: torch.Tensor, label_loss: torch.Tensor, images: torch.Tensor, progress: float) -> torch.Tensor:
        loss = label_loss
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            w = self.settings.distill_weight
            loss = (1 - w) * loss + w * distillation_loss(logits, teacher_logits, self.settings.distill_temperature)
        reg = self.regularizer_weight(progress)
        if reg > 0:
            loss = loss + reg * bin_regularizer(self.model)
        return loss

    def after_step(self) -> None:
        self.tracker.update()

    def epoch_summary(self) -> dict:
        layers = self.tracker.summary()
        weights = {name: layer.weight.numel() for name, layer in self.tracker.layers.items()}
        total = sum(weights.values())
        return {"oscillating_share": sum(layers[n]["oscillating"] * weights[n] for n in layers) / total,
                "frozen_share": sum(layers[n]["frozen"] * weights[n] for n in layers) / total,
                "layers": layers}

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)
