"""Datasets: fetch with checksums from several sources, split, and serve batches.

Sources are tried in order: files already in the raw folder, local mirror folders, then the
official URLs. Every file is verified against its MD5 before it is used, and written atomically.
`prepare_splits` carves a validation set from the training set with a fixed seed, so the test
set is never used for model selection. Torch-free: the workflow imports it when it loads
(`batches` turns prepared splits into tensors).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import pickle
import shutil
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_path


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: dict[str, tuple[str, ...]]  # file name -> accepted MD5s (upstream's, and repackaged copies')
    urls: tuple[str, ...]  # base URLs, tried in order
    img_size: int
    in_chans: int
    num_classes: int
    classes: tuple[str, ...]
    default_mirrors: tuple[str, ...] = field(default=())


_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

DATASETS = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        # upstream's archives, then Debian's dataset-fashion-mnist (same images, recompressed)
        files=dict(
            zip(
                _IDX_FILES,
                (
                    ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
                    ("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
                    ("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
                    ("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
                ),
            )
        ),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        img_size=28,
        in_chans=1,
        num_classes=10,
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        default_mirrors=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        files=dict(
            zip(
                _IDX_FILES,
                (
                    ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
                    ("d53e105ee54ea40749a09fcbcd1e9432",),
                    ("9fb629c4189551a2d022fa330f9573f3",),
                    ("ec29112dd5afa0611ce80d1b7f02629c",),
                ),
            )
        ),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        img_size=28,
        in_chans=1,
        num_classes=10,
        classes=tuple(str(i) for i in range(10)),
        default_mirrors=("/usr/share/datasets/mnist",),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        files={"cifar-10-python.tar.gz": ("c58f30108f718f92721af3b95e74349a",)},
        urls=("https://www.cs.toronto.edu/~kriz/",),
        img_size=32,
        in_chans=3,
        num_classes=10,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
}


class DatasetError(RuntimeError):
    pass


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r} (config key dataset.name); choose one of {sorted(DATASETS)}"
        ) from None


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_verified(fetch, dest: Path, accepted_md5: tuple[str, ...]) -> None:
    """Write `dest` through `fetch(tmp_path)`, keeping it only if the checksum matches."""
    with atomic_path(dest) as tmp:
        fetch(tmp)
        actual = md5sum(tmp)
        if actual not in accepted_md5:
            raise DatasetError(f"checksum mismatch: MD5 {actual}, expected one of {', '.join(accepted_md5)}")


def fetch_dataset(
    name: str,
    raw_dir: str | Path,
    mirrors: list[str] | None = None,
    urls: list[str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Make every file of dataset `name` present and verified in `raw_dir`; returns their paths."""
    spec = get_spec(name)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    mirror_dirs = [Path(m) for m in (mirrors if mirrors is not None else spec.default_mirrors)]
    base_urls = list(urls) if urls is not None else list(spec.urls)
    found = {}
    for file_name, expected in spec.files.items():
        dest = raw_dir / file_name
        tried = []
        if not _already_present(dest, expected, tried) and not _fetch_first(
            _sources(file_name, mirror_dirs, base_urls, timeout), dest, expected, tried
        ):
            raise _not_obtained(name, file_name, raw_dir, tried)
        found[file_name] = dest
    return found


def _already_present(dest: Path, expected: tuple[str, ...], tried: list[str]) -> bool:
    """Whether `dest` is there with an accepted checksum; a file with another one is noted in `tried`."""
    if not dest.exists():
        return False
    if md5sum(dest) in expected:
        return True
    tried.append(f"{dest}: present but checksum mismatch (expected MD5 {' or '.join(expected)})")
    return False


def _sources(file_name: str, mirror_dirs: list[Path], base_urls: list[str], timeout: float) -> list[tuple]:
    """Where `file_name` may come from, in the order tried: each mirror folder, then each base URL; each with the
    function that copies it to a temporary path (None for a mirror that lacks the file)."""

    def copy(tmp, src):
        shutil.copyfile(src, tmp)

    def download(tmp, url):
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)

    mirrored = [d / file_name for d in mirror_dirs]
    urls = [u.rstrip("/") + "/" + file_name for u in base_urls]
    return [(src, functools.partial(copy, src=src) if src.is_file() else None) for src in mirrored] + [
        (url, functools.partial(download, url=url)) for url in urls
    ]


def _fetch_first(sources: list[tuple], dest: Path, expected: tuple[str, ...], tried: list[str]) -> bool:
    """Fetch `dest` from the first of `sources` that gives a file with an accepted checksum; each failure is noted
    in `tried`."""
    for source, fetch in sources:
        if fetch is None:
            tried.append(f"{source}: not found")
            continue
        try:
            _copy_verified(fetch, dest, expected)
        except (OSError, DatasetError) as err:
            tried.append(f"{source}: {err}")
            continue
        return True
    return False


def _not_obtained(name: str, file_name: str, raw_dir: Path, tried: list[str]) -> DatasetError:
    """The error that names every source tried and how to supply the file."""
    hint = (
        "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        if name == "fashion_mnist"
        else ""
    )
    return DatasetError(
        f"could not obtain {file_name} for dataset {name!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo fix: {hint}copy the file into {raw_dir}, or list a folder holding it under the config key "
        "dataset.mirrors."
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, the MNIST / Fashion-MNIST format."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: unreadable ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says shape {shape} but the file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _load_cifar10(archive: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def batches(names):
        xs, ys = [], []
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member = tar.extractfile(f"cifar-10-batches-py/{name}")
                if member is None:
                    raise DatasetError(f"{archive}: missing cifar-10-batches-py/{name}")
                batch = pickle.load(member, encoding="bytes")
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.uint8))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = batches([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = batches(["test_batch"])
    return x_train, y_train, x_test, y_test


def load_raw(name: str, raw_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays as uint8 images [N, C, H, W] and uint8 labels."""
    raw_dir = Path(raw_dir)
    if name == "cifar10":
        return _load_cifar10(raw_dir / "cifar-10-python.tar.gz")
    get_spec(name)
    x_train, y_train, x_test, y_test = (read_idx(raw_dir / f) for f in _IDX_FILES)
    return x_train[:, None], y_train, x_test[:, None], y_test


def prepare_splits(
    name: str,
    raw_dir: str | Path,
    out_path: str | Path,
    *,
    val_size: int,
    split_seed: int,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> dict:
    """Write train / val / test arrays to one .npz; returns a summary of the split."""
    x_train, y_train, x_test, y_test = load_raw(name, raw_dir)
    if not 0 < val_size < len(x_train):
        raise DatasetError(f"dataset.val_size={val_size} must be between 1 and {len(x_train) - 1}")
    order = np.random.default_rng(split_seed).permutation(len(x_train))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    test_idx = np.arange(len(x_test)) if test_subset is None else np.arange(min(test_subset, len(x_test)))
    x_tr = x_train[train_idx]
    # per-channel normalisation statistics come from the training split only
    mean = x_tr.reshape(len(x_tr), x_tr.shape[1], -1).mean(axis=(0, 2)) / 255.0
    std = x_tr.reshape(len(x_tr), x_tr.shape[1], -1).std(axis=(0, 2)) / 255.0
    arrays = dict(
        x_train=x_tr,
        y_train=y_train[train_idx],
        x_val=x_train[val_idx],
        y_val=y_train[val_idx],
        x_test=x_test[test_idx],
        y_test=y_test[test_idx],
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return {
        "dataset": name,
        "train": int(len(train_idx)),
        "val": int(len(val_idx)),
        "test": int(len(test_idx)),
        "split_seed": split_seed,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }


def raw_file_names(name: str) -> list[str]:
    return list(get_spec(name).files)
