"""Prepared splits as normalised tensors, augmentation and batching (the torch side of the data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Splits:
    """Normalised float tensors of a prepared .npz, ready for batching, on `device` (a GPU holds a
    whole small dataset, so batches need no host-to-device copies)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        with np.load(path) as data:
            self.mean = torch.from_numpy(data["mean"]).reshape(1, -1, 1, 1)
            self.std = torch.from_numpy(data["std"]).reshape(1, -1, 1, 1)
            self.x = {s: self._normalise(data[f"x_{s}"]).to(device) for s in ("train", "val", "test")}
            self.y = {s: torch.from_numpy(data[f"y_{s}"].astype(np.int64)).to(device) for s in ("train", "val", "test")}

    def _normalise(self, x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).float().div_(255.0) - self.mean) / self.std

    @property
    def device(self) -> torch.device:
        return self.x["train"].device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x["train"].shape[1:])


def augment(x: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image. The random numbers
    come from the CPU `generator` wherever `x` lives, so a seed means the same crops on any device."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        index = (torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols)
        x = padded[tuple(i.to(x.device) for i in index)]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    limit: int | None = None,
):
    """Yield (images, labels) batches; `limit` caps how many images are used."""
    n = len(x) if limit is None else min(limit, len(x))
    order = torch.randperm(len(x), generator=generator)[:n] if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size].to(x.device)
        yield x[idx], y[idx]
