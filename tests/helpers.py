"""Shared test helpers: the config schema, a tiny fake Fashion-MNIST, in-memory ONNX export of a quantized model, a
free local port, and the mark for tests that need Debian's Fashion-MNIST (the workflow tests' data)."""

from __future__ import annotations

import gzip
import io
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qatstudy import quant
from qatstudy.data import prepare_splits

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())

needs_fashion_mnist = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (./bootstrap installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_quantized(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, bytes]:
    """The model's PyTorch (fake-quant) logits for `x`, and the model exported as ONNX bytes."""
    with torch.no_grad():
        expected = model(x).numpy()
    buffer = io.BytesIO()
    with quant.export_mode(model), torch.no_grad():
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"])
    return expected, buffer.getvalue()


def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes()))


def make_tiny_dataset(folder: Path, n_train: int = 120, n_test: int = 40, val_size: int = 20, seed: int = 0) -> Path:
    """Fake Fashion-MNIST IDX files (a bright square whose position is the class), prepared as .npz."""
    rng = np.random.default_rng(seed)

    def images(labels):
        x = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            x[i, r * 9 : r * 9 + 7, col * 7 : col * 7 + 7] += 180
        return x

    y_train = np.arange(n_train) % 10
    y_test = rng.permutation(np.arange(n_test) % 10)
    raw = folder / "raw"
    raw.mkdir(parents=True)
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    for name, arr in zip(names, (images(y_train), y_train, images(y_test), y_test)):
        _write_idx(raw / name, arr)
    out = folder / "splits.npz"
    prepare_splits("fashion_mnist", raw, out, val_size=val_size, split_seed=0)
    return out
