"""Fashion-MNIST as a folder of labelled images: the built-in data of ``headstart demo`` and the benchmarks.

Read from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); downloaded from
the authors' mirror when that is missing and the network is there.
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.core.errors import DataError, PathNotFoundError
from headstart.core.hashing import file_digest

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 of the files on the official mirror (the values torchvision checks too): a download that differs is damaged.
MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
       "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
       "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
       "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        _zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        assert dtype_code == 0x08, f"{path}: only unsigned-byte idx files are expected"
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def _locate(name: str) -> Path | None:
    for folder in (Path(os.environ.get("HEADSTART_FASHION_MNIST", DEBIAN_DIR)), DEBIAN_DIR, _cache_dir()):
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headstart" / "fashion-mnist"


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) for ``train`` (60k) or ``test`` (10k)."""
    paths = []
    for name in FILES[split]:
        path = _locate(name)
        if path is None:
            path = _cache_dir() / name
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                urllib.request.urlretrieve(MIRROR + name, path)
            except OSError as exc:
                path.unlink(missing_ok=True)
                raise PathNotFoundError(
                    f"Fashion-MNIST is not installed and could not be downloaded ({exc}). Install the Debian "
                    "package: `apt-get install dataset-fashion-mnist`, or set HEADSTART_FASHION_MNIST to a folder "
                    "with its idx files.") from None
            _verify(path, MD5[name])
        paths.append(path)
    return read_idx(paths[0]), read_idx(paths[1])


def _verify(path: Path, md5: str) -> None:
    """A downloaded file must have the mirror's checksum; a damaged one is removed so the next try downloads it."""
    digest = file_digest(path, "md5")
    if digest != md5:
        path.unlink(missing_ok=True)
        raise DataError(f"the downloaded {path.name} is damaged (MD5 {digest}, expected {md5}) and was removed; run "
                        "again to download it again, or install the Debian package dataset-fashion-mnist.")


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """``per_class`` random indices of each class, none of them in ``exclude``."""
    available = np.ones(len(labels), bool)
    if exclude is not None:
        available[exclude] = False
    out = [rng.choice(np.flatnonzero((labels == c) & available), per_class, replace=False)
           for c in range(int(labels.max()) + 1)]
    return np.sort(np.concatenate(out))


def write_folder(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, folder: Path, prefix: str = "") -> None:
    """Writes the chosen images as PNGs into ``folder/<class>/``."""
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(images[i], mode="L").save(folder / CLASSES[labels[i]] / f"{prefix}{i:05d}.png")


def make_image_folder(out: str | Path, train_per_class: int = 50, val_per_class: int = 10, test_images: int = 2000,
                      seed: int = 0) -> Path:
    """A small labelled Fashion-MNIST: ``train/`` and ``val/`` from the training set, ``test/`` a balanced draw
    from the official test set. Returns ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    x, y = load("train")
    train_idx = balanced_indices(y, train_per_class, rng)
    val_idx = balanced_indices(y, val_per_class, rng, exclude=train_idx)
    write_folder(x, y, train_idx, out / "train")
    write_folder(x, y, val_idx, out / "val")
    if test_images:
        xt, yt = load("test")
        write_folder(xt, yt, balanced_indices(yt, test_images // len(CLASSES), rng), out / "test", prefix="t")
    return out
