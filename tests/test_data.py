"""Tests of dataset fetching (checksums, mirrors, URLs, atomic writes), IDX/CIFAR parsing and splits."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qatstudy import data
from qatstudy.batches import Splits, augment, iterate_batches
from qatstudy.data import (
    DatasetError,
    DatasetSpec,
    fetch_dataset,
    load_raw,
    prepare_splits,
    read_idx,
)
from qatstudy.train import DEVICE_ENV, training_device

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)
    return path


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files (atomic_path names them .<dest>.XXXX.tmp) left in `folder`."""
    return [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(".")]


# ---------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_parses(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(7,), dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / f"images{suffix}", images))
    got_labels = read_idx(str(write_idx(tmp_path / f"labels{suffix}", labels)))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 4)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("damage", ["truncated", "extra_bytes", "float_type", "bad_magic", "empty", "header_only"])
def test_read_idx_rejects_bad_files(tmp_path, suffix, damage):
    raw = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    raw = {
        "truncated": raw[:-1],
        "extra_bytes": raw + b"\x00",
        "float_type": raw[:2] + b"\x0d" + raw[3:],
        "bad_magic": b"\x01" + raw[1:],
        "empty": b"",
        "header_only": raw[:6],
    }[damage]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    with pytest.raises(DatasetError):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip_stream(tmp_path):
    """A partially written/downloaded .gz must also be reported as a DatasetError."""
    raw = gzip.compress(idx_bytes(np.arange(3000, dtype=np.int64).astype(np.uint8).reshape(30, 100)))
    path = tmp_path / "cut.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError):
        read_idx(path)


# ---------------------------------------------------------------------------------------------
# fetch_dataset


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A two-file dataset 'toy' registered in DATASETS, with a good, a corrupt and an empty mirror."""
    contents = {"a.bin": b"alpha contents\n" * 50, "b.bin": os.urandom(3000)}
    spec = DatasetSpec(
        name="toy",
        files={n: ("0" * 32, md5(c)) for n, c in contents.items()},  # second accepted MD5 is the real one
        urls=(),
        img_size=4,
        in_chans=1,
        num_classes=2,
        classes=("x", "y"),
    )
    monkeypatch.setitem(data.DATASETS, "toy", spec)
    good, bad, empty = tmp_path / "good", tmp_path / "bad", tmp_path / "empty"
    for d in (good, bad, empty):
        d.mkdir()
    for n, c in contents.items():
        (good / n).write_bytes(c)
        (bad / n).write_bytes(c[:-1] + b"!")
    raw = tmp_path / "raw"

    class Toy:
        pass

    t = Toy()
    t.contents, t.spec, t.good, t.bad, t.empty, t.raw = contents, spec, good, bad, empty, raw
    return t


def _check_good(toy, found):
    assert set(found) == set(toy.contents)
    for n, c in toy.contents.items():
        assert found[n] == toy.raw / n
        assert (toy.raw / n).read_bytes() == c
    assert leftovers(toy.raw) == []


def test_fetch_files_already_in_place_are_not_copied(toy, monkeypatch):
    toy.raw.mkdir()
    for n, c in toy.contents.items():
        (toy.raw / n).write_bytes(c)
    inodes = {n: os.stat(toy.raw / n).st_ino for n in toy.contents}

    def no_copy(*args, **kwargs):
        raise AssertionError("a valid file in place must not be copied again")

    monkeypatch.setattr(data.shutil, "copyfile", no_copy)
    monkeypatch.setattr(data.urllib.request, "urlopen", no_copy)
    found = fetch_dataset("toy", toy.raw, mirrors=[str(toy.good)], urls=[toy.good.as_uri()])
    _check_good(toy, found)
    assert {n: os.stat(toy.raw / n).st_ino for n in toy.contents} == inodes
    # with no source at all it still succeeds
    _check_good(toy, fetch_dataset("toy", toy.raw, mirrors=[], urls=[]))


def test_fetch_copies_from_mirror(toy):
    found = fetch_dataset("toy", toy.raw, mirrors=[str(toy.empty), str(toy.good)], urls=[])
    _check_good(toy, found)


def test_fetch_uses_default_mirrors(toy, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "toy", DatasetSpec(**{**toy.spec.__dict__, "default_mirrors": (str(toy.good),)}))
    _check_good(toy, fetch_dataset("toy", toy.raw, urls=[]))


def test_fetch_rejects_bad_mirror_copy_and_uses_next_source(toy):
    _check_good(toy, fetch_dataset("toy", toy.raw, mirrors=[str(toy.bad), str(toy.good)], urls=[]))


def test_fetch_bad_mirror_then_file_url(toy):
    found = fetch_dataset("toy", toy.raw, mirrors=[str(toy.bad)], urls=[toy.good.as_uri() + "/"])
    _check_good(toy, found)


def test_fetch_from_file_url(toy):
    missing_url = (toy.empty / "nothing").as_uri()
    _check_good(toy, fetch_dataset("toy", toy.raw, mirrors=[], urls=[missing_url, toy.good.as_uri()]))


def test_fetch_replaces_corrupt_file_in_place(toy):
    toy.raw.mkdir()
    for n in toy.contents:
        (toy.raw / n).write_bytes(b"garbage")
    _check_good(toy, fetch_dataset("toy", toy.raw, mirrors=[str(toy.good)], urls=[]))


def test_fetch_failure_message_names_file_sources_and_config_key(toy):
    missing_dir = toy.good.parent / "does-not-exist"
    bad_url = toy.bad.as_uri()
    missing_url = (toy.good.parent / "nowhere").as_uri()
    with pytest.raises(DatasetError) as info:
        fetch_dataset("toy", toy.raw, mirrors=[str(missing_dir), str(toy.bad)], urls=[missing_url, bad_url])
    msg = str(info.value)
    assert "a.bin" in msg and "'toy'" in msg
    for source in (missing_dir / "a.bin", toy.bad / "a.bin"):
        assert str(source) in msg
    for url in (missing_url + "/a.bin", bad_url + "/a.bin"):
        assert url in msg
    assert "checksum mismatch" in msg
    assert "dataset.mirrors" in msg
    # nothing half-written: no temporary file and no unverified file left behind
    assert os.listdir(toy.raw) == []


def test_fetch_failure_on_second_file_names_it(toy):
    (toy.empty / "a.bin").write_bytes(toy.contents["a.bin"])
    with pytest.raises(DatasetError) as info:
        fetch_dataset("toy", toy.raw, mirrors=[str(toy.empty)], urls=[])
    msg = str(info.value)
    assert "could not obtain b.bin" in msg and str(toy.empty / "b.bin") in msg
    assert sorted(os.listdir(toy.raw)) == ["a.bin"]  # the verified first file stays, no temporaries


def test_fetch_failure_keeps_corrupt_file_and_leaves_no_temporaries(toy):
    toy.raw.mkdir()
    (toy.raw / "a.bin").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as info:
        fetch_dataset("toy", toy.raw, mirrors=[str(toy.bad)], urls=[toy.bad.as_uri()])
    assert "present but checksum mismatch" in str(info.value)
    assert sorted(os.listdir(toy.raw)) == ["a.bin"]
    assert (toy.raw / "a.bin").read_bytes() == b"garbage"  # never overwritten by an unverified copy


def test_fetch_unknown_dataset():
    with pytest.raises(DatasetError, match="dataset.name"):
        fetch_dataset("no_such_dataset", "/nonexistent")


def test_fashion_mnist_hint_in_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist") as info:
        fetch_dataset("fashion_mnist", tmp_path / "raw", mirrors=[str(tmp_path)], urls=[])
    assert "train-images-idx3-ubyte.gz" in str(info.value)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def _cifar_archive(path: Path, n_train_per_batch: int = 4, n_test: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            n = n_test if name == "test_batch" else n_train_per_batch
            batch = {
                b"batch_label": name.encode(),
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, n).tolist(),
                b"filenames": [b"x.png"] * n,
            }
            batches[name] = batch
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        meta = pickle.dumps({b"label_names": [b"airplane"] * 10})
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return batches


def test_load_raw_cifar10(tmp_path):
    batches = _cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    x_train, y_train, x_test, y_test = load_raw("cifar10", tmp_path)
    assert x_train.shape == (20, 3, 32, 32) and x_train.dtype == np.uint8
    assert x_test.shape == (3, 3, 32, 32)
    assert y_train.shape == (20,) and y_test.shape == (3,)
    order = [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(y_train, np.concatenate([batches[n][b"labels"] for n in order]))
    np.testing.assert_array_equal(y_test, batches["test_batch"][b"labels"])
    # row layout: 1024 red, then green, then blue values, each 32x32 row-major
    row = batches["data_batch_2"][b"data"][1]
    np.testing.assert_array_equal(x_train[5, 1], row[1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(x_test[2, 2], batches["test_batch"][b"data"][2][2048:].reshape(32, 32))


def test_load_raw_cifar10_missing_member(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        payload = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises((DatasetError, KeyError)):
        load_raw("cifar10", tmp_path)


# ---------------------------------------------------------------------------------------------
# prepare_splits and Splits

N_TRAIN, N_TEST = 200, 50


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A fake Fashion-MNIST folder; each training image carries its index in pixels (0,0) and (0,1)."""
    folder = tmp_path_factory.mktemp("fake_fashion")
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
    x_train[:100] //= 2  # the first half is darker, so subsets have different statistics
    x_train[:, 0, 0] = np.arange(N_TRAIN) % 256
    x_train[:, 0, 1] = np.arange(N_TRAIN) // 256
    y_train = rng.integers(0, 10, N_TRAIN, dtype=np.uint8)
    x_test = rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)
    y_test = rng.integers(0, 10, N_TEST, dtype=np.uint8)
    for name, arr in zip(IDX_NAMES, (x_train, y_train, x_test, y_test)):
        write_idx(folder / name, arr)
    return folder, (x_train, y_train, x_test, y_test)


def _ids(x):
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 0, 1].astype(int)


def _prepare(idx_dir, out, **kw):
    kw = {"val_size": 40, "split_seed": 0, **kw}
    return prepare_splits("fashion_mnist", idx_dir[0], out, **kw)


def test_load_raw_idx(idx_dir):
    x_train, y_train, x_test, y_test = load_raw("fashion_mnist", idx_dir[0])
    assert x_train.shape == (N_TRAIN, 1, 28, 28) and x_test.shape == (N_TEST, 1, 28, 28)
    np.testing.assert_array_equal(x_train[:, 0], idx_dir[1][0])
    np.testing.assert_array_equal(y_test, idx_dir[1][3])


def test_prepare_splits_partition(idx_dir, tmp_path):
    out = tmp_path / "splits" / "d.npz"
    summary = _prepare(idx_dir, out)
    assert summary["train"] == N_TRAIN - 40 and summary["val"] == 40 and summary["test"] == N_TEST
    assert summary["split_seed"] == 0 and summary["dataset"] == "fashion_mnist"
    x_train, y_train, x_test, y_test = idx_dir[1]
    with np.load(out) as d:
        tr, va = _ids(d["x_train"]), _ids(d["x_val"])
        assert d["x_train"].shape == (N_TRAIN - 40, 1, 28, 28) and d["x_val"].shape == (40, 1, 28, 28)
        assert not set(tr) & set(va)
        assert sorted(np.concatenate([tr, va])) == list(range(N_TRAIN))
        assert len(set(tr)) == len(tr)
        # labels and images stay paired
        np.testing.assert_array_equal(d["y_train"], y_train[tr])
        np.testing.assert_array_equal(d["y_val"], y_train[va])
        np.testing.assert_array_equal(d["x_train"][:, 0], x_train[tr])
        np.testing.assert_array_equal(d["x_test"][:, 0], x_test)
        np.testing.assert_array_equal(d["y_test"], y_test)
        # normalisation statistics come from the training split only
        mean = d["x_train"].astype(np.float64).mean() / 255
        std = d["x_train"].astype(np.float64).std() / 255
        np.testing.assert_allclose(d["mean"], [mean], rtol=1e-5)
        np.testing.assert_allclose(d["std"], [std], rtol=1e-5)
        assert d["mean"].dtype == np.float32 and d["mean"].shape == (1,)
        full_mean = x_train.astype(np.float64).mean() / 255
        assert abs(full_mean - mean) > 1e-4  # the test can tell the two apart
    np.testing.assert_allclose(summary["mean"], [mean], rtol=1e-5)
    assert leftovers(out.parent) == []


def test_prepare_splits_seeded(idx_dir, tmp_path):
    _prepare(idx_dir, tmp_path / "a.npz", split_seed=3)
    _prepare(idx_dir, tmp_path / "b.npz", split_seed=3)
    _prepare(idx_dir, tmp_path / "c.npz", split_seed=4)
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b, np.load(tmp_path / "c.npz") as c:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(_ids(a["x_val"]), _ids(c["x_val"]))
        assert set(_ids(a["x_val"])) != set(_ids(c["x_val"]))


def test_prepare_splits_subsets(idx_dir, tmp_path):
    summary = _prepare(idx_dir, tmp_path / "s.npz", train_subset=50, test_subset=20)
    assert (summary["train"], summary["val"], summary["test"]) == (50, 40, 20)
    with np.load(tmp_path / "s.npz") as d:
        assert len(d["x_train"]) == len(d["y_train"]) == 50
        assert len(d["x_test"]) == len(d["y_test"]) == 20
        assert len(d["x_val"]) == 40
        assert not set(_ids(d["x_train"])) & set(_ids(d["x_val"]))
        np.testing.assert_allclose(d["mean"], [d["x_train"].astype(np.float64).mean() / 255], rtol=1e-5)
    big = _prepare(idx_dir, tmp_path / "t.npz", train_subset=10_000, test_subset=10_000)
    assert (big["train"], big["test"]) == (N_TRAIN - 40, N_TEST)


@pytest.mark.parametrize("val_size", [0, -1, N_TRAIN, N_TRAIN + 5])
def test_prepare_splits_bad_val_size(idx_dir, tmp_path, val_size):
    with pytest.raises(DatasetError, match="dataset.val_size"):
        _prepare(idx_dir, tmp_path / "v.npz", val_size=val_size)
    assert os.listdir(tmp_path) == []


def test_prepare_splits_extreme_val_sizes(idx_dir, tmp_path):
    assert _prepare(idx_dir, tmp_path / "x.npz", val_size=1)["train"] == N_TRAIN - 1
    assert _prepare(idx_dir, tmp_path / "y.npz", val_size=N_TRAIN - 1)["train"] == 1


def test_prepare_splits_atomic_on_failure(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "fail.npz"
    out.write_bytes(b"previous")

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "savez", broken_savez)
    with pytest.raises(OSError):
        _prepare(idx_dir, out)
    assert out.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_splits_load_and_normalise(idx_dir, tmp_path):
    out = tmp_path / "d.npz"
    _prepare(idx_dir, out, test_subset=10)
    splits = Splits(out)
    assert splits.image_shape == (1, 28, 28)
    with np.load(out) as d:
        for s in ("train", "val", "test"):
            x = splits.x[s]
            assert x.dtype == torch.float32 and x.shape == (len(d[f"x_{s}"]), 1, 28, 28)
            expected = (d[f"x_{s}"].astype(np.float32) / 255 - d["mean"].reshape(1, -1, 1, 1)) / d["std"].reshape(
                1, -1, 1, 1
            )
            np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
            assert splits.y[s].dtype == torch.int64
            np.testing.assert_array_equal(splits.y[s].numpy(), d[f"y_{s}"])
    # training split is standardised
    assert abs(splits.x["train"].mean().item()) < 1e-4
    assert abs(splits.x["train"].std().item() - 1) < 1e-3


# ---------------------------------------------------------------------------------------------
# augment and iterate_batches


def test_augment_identity_without_padding_or_flip():
    x = torch.randn(5, 3, 8, 8)
    out = augment(x, 0, False, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_augment_shapes_and_determinism():
    x = torch.randn(6, 3, 10, 12)
    a = augment(x, 4, True, torch.Generator().manual_seed(1))
    b = augment(x, 4, True, torch.Generator().manual_seed(1))
    c = augment(x, 4, True, torch.Generator().manual_seed(2))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_and_batching_stay_on_the_data_device():
    # "meta" stands in for a GPU: it rejects the CPU index and mask tensors a CUDA tensor would
    x, y = torch.empty(6, 3, 10, 12, device="meta"), torch.empty(6, dtype=torch.long, device="meta")
    generator = torch.Generator().manual_seed(0)
    xb, yb = next(iterate_batches(x, y, 4, shuffle=True, generator=generator))
    out = augment(xb, 2, True, generator)
    assert (out.device.type, yb.device.type, tuple(out.shape)) == ("meta", "meta", (4, 3, 10, 12))


def test_training_device_honours_the_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert training_device() == torch.device("cpu")
    monkeypatch.delenv(DEVICE_ENV)
    assert training_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_augment_crops_are_shifted_windows_of_padded_image():
    x = torch.rand(8, 2, 6, 7) + 1  # strictly positive, so zero padding is recognisable
    pad = 2
    out = augment(x, pad, False, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
        ]
        assert matches, f"image {i} is not a crop of its padded original"
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_augment_flip_only():
    x = torch.randn(32, 1, 4, 5)
    out = augment(x, 0, True, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_iterate_batches_shuffled_covers_each_index_once():
    x = torch.arange(23).float()[:, None]
    y = torch.arange(23)
    batches = list(iterate_batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert seen.tolist() != list(range(23))
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb)


def test_iterate_batches_order_and_limit():
    x = torch.arange(23).float()[:, None]
    y = torch.arange(23)
    assert torch.cat([b for _, b in iterate_batches(x, y, 4)]).tolist() == list(range(23))
    limited = [b for _, b in iterate_batches(x, y, 4, limit=10)]
    assert [len(b) for b in limited] == [4, 4, 2]
    assert torch.cat(limited).tolist() == list(range(10))
    shuffled = torch.cat(
        [b for _, b in iterate_batches(x, y, 4, shuffle=True, limit=10, generator=torch.Generator().manual_seed(0))]
    )
    assert len(shuffled) == 10 and len(set(shuffled.tolist())) == 10
    assert len(torch.cat([b for _, b in iterate_batches(x, y, 4, limit=100)])) == 23
    same = [
        torch.cat([b for _, b in iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(5))])
        for _ in range(2)
    ]
    assert torch.equal(*same)


# ---------------------------------------------------------------------------------------------
# the real Fashion-MNIST files (Debian's dataset-fashion-mnist), when installed


@pytest.mark.skipif(
    not all((FASHION_DIR / n).is_file() for n in IDX_NAMES), reason=f"Fashion-MNIST not installed at {FASHION_DIR}"
)
def test_fetch_real_fashion_mnist_from_mirror(tmp_path):
    found = fetch_dataset("fashion_mnist", tmp_path, urls=[])  # default mirror, no network
    assert set(found) == set(IDX_NAMES)
    assert leftovers(tmp_path) == []
    assert read_idx(found["train-images-idx3-ubyte.gz"]).shape == (60000, 28, 28)
    assert read_idx(found["t10k-images-idx3-ubyte.gz"]).shape == (10000, 28, 28)
    train_labels = read_idx(found["train-labels-idx1-ubyte.gz"])
    assert train_labels.shape == (60000,) and set(np.unique(train_labels)) == set(range(10))
    assert read_idx(found["t10k-labels-idx1-ubyte.gz"]).shape == (10000,)
