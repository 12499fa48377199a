"""Training settings, importable without torch (the workflow reads them when it loads)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainSettings:
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
