"""The typed settings the stages take, each field read from one key of the study config; importable without torch
(the workflow reads them when it loads).

The schema (schemas/config.schema.yaml) is the one definition of the config's keys, types, ranges and defaults.
These records only say which key each field is read from (`config_field`), and tests/test_config.py checks every
field against the schema (the key exists, the types agree, a schema default is the field's default), so the two
cannot drift. The one place defaults live here rather than in the schema is the training settings: the schema
gives `train` and `qat` none, so that a rule's params and the config hash carry only the keys a config writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

# The schema definition every TrainSettings field is a key of (the `train` and `qat` sections, and a model's own
# `models.<name>.train` / `.qat`).
TRAIN_SETTINGS_DEFINITION = "train_settings"


def config_field(section: str, key: str, default):
    """A field read from the config's `section.key`."""
    return field(default=default, metadata={"config": (section, key)})


def config_values(cls, config: dict) -> dict:
    """The values of `cls`'s fields (each made with config_field) in `config`, by field name."""
    return {f.name: config[f.metadata["config"][0]][f.metadata["config"][1]] for f in fields(cls)}


@dataclass(frozen=True)
class TrainSettings:
    """One training protocol: the config's `train` (FP32) or `qat` section, with a model's own overrides."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.0
    crop_padding: int = 0
    hflip: bool = False
    images_per_epoch: int | None = None  # None: the whole training split each epoch
    quantizer_lr_scale: float = 1.0  # lr multiplier for LSQ step sizes and offsets (see train.param_groups)

    def fingerprint(self, **extra) -> str:
        blob = json.dumps({**asdict(self), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QATSettings:
    """The QAT additions to the loss (objectives.QATObjective), from three config sections."""

    distill_weight: float = config_field("distillation", "weight", 0.0)
    distill_temperature: float = config_field("distillation", "temperature", 4.0)
    crops: int = config_field("distillation", "crops", 1)
    regularizer_weight: float = config_field("regularizer", "weight", 0.0)
    oscillation_momentum: float = config_field("oscillation", "momentum", 0.99)
    oscillation_threshold: float = config_field("oscillation", "threshold", 0.01)
    freeze_threshold: float | None = config_field("oscillation", "freeze_threshold", None)
    freeze_threshold_final: float | None = config_field("oscillation", "freeze_threshold_final", None)
    freeze_max_bits: int = config_field("oscillation", "freeze_max_bits", 4)


@dataclass(frozen=True)
class BatchnormReestimation:
    """Batch-norm re-estimation of a quantized model (docs/methods.md, "Batch norm")."""

    images: int = config_field("calibration", "batchnorm_images", 0)  # 0: off
    # validation top-1 points the re-estimated statistics must gain to be kept
    min_gain: float = config_field("calibration", "batchnorm_min_gain", 0.1)

    @classmethod
    def from_config(cls, calibration: dict) -> BatchnormReestimation:
        """From the config's `calibration` section (a rule's `calibration` param)."""
        return cls(**config_values(cls, {"calibration": calibration}))
