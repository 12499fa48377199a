"""QAT training additions that fit() consults: distillation, the bin regularizer, oscillation tracking.

- Knowledge distillation from the FP32 model (Hinton et al. 2015): KL divergence between the
  teacher's and the student's temperature-softened predictions, times T^2, mixed with the label
  loss by `weight`. With `crops` > 1 each image is seen in several augmented crops per step, as
  in the multi-crop distillation of Huang et al. (TMLR 2024).
- Variation-aware bin regularizer (Huang et al.'s BinReg, reference code HuangOwen/Quantization-Variation,
  util_loss.py): per quantized layer, the mean squared distance of the clipped latent weights from their quantized
  values plus, for every integer bin, the (unbiased) variance of the clipped latent weights that round into it,
  so that weights settle at their bin centres and stop oscillating across edges. As there, the weight is 0 for
  the first quarter of QAT and then rises on a cosine to `weight` at the end. Two differences: it is measured in
  units of each weight's step size (per-channel steps make weight units incomparable across channels; for one
  per-tensor step it is the reference formula divided by s^2), and averaged over layers rather than summed, so that
  one weight suits models of any depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .quant import quant_modules
from .quant.oscillation import OscillationTracker
from .stage_settings import QATSettings

REGULARIZER_START = 0.25  # share of QAT before the bin regularizer starts (Huang et al.'s rel_decay_start)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )


def bin_regularizer(model: nn.Module) -> torch.Tensor:
    terms = []
    for _, layer in quant_modules(model):
        q = layer.weight_quantizer
        clipped = (layer.weight / q.step_like(layer.weight)).clamp(q.qmin, q.qmax)  # gradient reaches the weights
        integers = clipped.detach().round()
        terms.append(((integers - clipped) ** 2).mean() + _bin_variances(clipped, integers, q.qmin, q.qmax).sum())
    return torch.stack(terms).mean()


def _bin_variances(values: torch.Tensor, integers: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The unbiased variance of `values` within each integer bin of more than one value (0 for the others)."""
    bins = (integers - qmin).long().reshape(-1)
    values = values.reshape(-1)
    size = qmax - qmin + 1
    count = torch.bincount(bins, minlength=size).to(values.dtype)
    total = values.new_zeros(size).index_add(0, bins, values)
    squares = values.new_zeros(size).index_add(0, bins, values * values)
    several = count > 1
    return torch.where(several, (squares - total * total / count.clamp_min(1)) / (count - 1).clamp_min(1), 0.0)


class QATObjective:
    """The loss and the per-step bookkeeping of a QAT run."""

    def __init__(self, model: nn.Module, settings: QATSettings, teacher: nn.Module | None = None):
        if settings.distill_weight > 0 and teacher is None:
            raise ValueError("distillation needs a teacher model")
        self.model, self.settings = model, settings
        self.teacher = teacher.eval() if teacher is not None and settings.distill_weight > 0 else None
        self.tracker = OscillationTracker(
            model,
            momentum=settings.oscillation_momentum,
            threshold=settings.oscillation_threshold,
            freeze_threshold=settings.freeze_threshold,
            freeze_threshold_final=settings.freeze_threshold_final,
            freeze_max_bits=settings.freeze_max_bits,
        )

    @property
    def crops(self) -> int:
        return self.settings.crops

    def regularizer_weight(self, progress: float) -> float:
        """0 for the first quarter of training, then a cosine rise to the configured weight (the reference code's
        CosineTempDecay with rel_decay_start 0.25)."""
        t = min(max((progress - REGULARIZER_START) / (1 - REGULARIZER_START), 0.0), 1.0)
        return self.settings.regularizer_weight * (1 - math.cos(math.pi * t)) / 2

    def loss(
        self, logits: torch.Tensor, label_loss: torch.Tensor, images: torch.Tensor, progress: float
    ) -> torch.Tensor:
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

    def after_step(self, progress: float) -> None:
        self.tracker.update(progress)

    def end_epoch(self) -> None:
        """Before the epoch's evaluation and snapshot: the weights take their held integers (see release)."""
        self.tracker.write_held()

    def release(self) -> None:
        """After training: the model's weights alone (its best epoch's, which end_epoch wrote) are the result."""
        self.tracker.release()

    def epoch_summary(self) -> dict:
        layers = self.tracker.summary()
        weights = {name: layer.weight.numel() for name, layer in self.tracker.layers.items()}
        total = sum(weights.values())

        def share(key: str) -> float:
            return sum(layers[n][key] * weights[n] for n in layers) / total

        return {
            "oscillating_share": share("oscillating"),
            "integer_flip_share": share("integer_flips"),
            "frozen_share": share("frozen"),
            "layers": layers,
        }

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)
