"""A multi-label set made of real pictures: 2x2 mosaics of Fashion-MNIST items, each labelled with the classes it
shows (one to four items; a cell may stay empty). Used by the tests and ``benchmarks/multilabel.py``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data import fashion_mnist


def mosaic(items: list[np.ndarray], cells: list[int]) -> np.ndarray:
    """A 56x56 grey image with ``items`` (28x28) placed in ``cells`` (0-3, row by row), the other cells black."""
    out = np.zeros((56, 56), np.uint8)
    for item, cell in zip(items, cells):
        r, c = divmod(cell, 2)
        out[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] = item
    return out


def _draw(images: np.ndarray, labels: np.ndarray, n: int, classes: int, rng: np.random.Generator, folder: Path,
          prefix: str) -> list[tuple[str, list[str]]]:
    rows = []
    pools = [np.flatnonzero(labels == c) for c in range(classes)]
    for i in range(n):
        k = int(rng.integers(1, 5))
        chosen = rng.choice(classes, size=k, replace=True)
        items = [images[rng.choice(pools[c])] for c in chosen]
        cells = list(rng.permutation(4)[:k])
        name = f"{prefix}{i:05d}.png"
        Image.fromarray(mosaic(items, cells), mode="L").save(folder / name)
        rows.append((name, sorted({fashion_mnist.CLASSES[c] for c in chosen})))
    return rows


def make_mosaic_set(out: str | Path, train: int = 200, test: int = 200, classes: int = 10, seed: int = 0,
                    split_column: bool = False) -> Path:
    """Writes ``out/images/*.png`` and ``out/labels.csv`` (``path,labels[,split]``, labels separated by ``;``).
    Train images come from Fashion-MNIST's training set, test images from its test set. Returns the CSV's path.

    Args:
        out: folder to write into.
        train, test: how many mosaics of each.
        classes: the first this many Fashion-MNIST classes are used.
        seed: makes the set repeatable.
        split_column: write a ``split`` column (train/test); without it every row is a training image.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = fashion_mnist.load("train")
    rows = [(f"images/{p}", ys, "train") for p, ys in _draw(x, y, train, classes, rng, out / "images", "m")]
    if test:
        xt, yt = fashion_mnist.load("test")
        rows += [(f"images/{p}", ys, "test") for p, ys in _draw(xt, yt, test, classes, rng, out / "images", "t")]
    path = out / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"] + (["split"] if split_column else []))
        for p, ys, split in rows:
            if split == "test" and not split_column:
                continue
            w.writerow([p, ";".join(ys)] + ([split] if split_column else []))
    return path
