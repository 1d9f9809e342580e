"""Shared fixtures: small image folders that tests write themselves (no network, no downloads)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 220), "purple": (150, 40, 160)}


def make_class_folder(root: Path, per_class: int = 8, size: int = 32, classes=("red", "green", "blue"),
                      seed: int = 0) -> Path:
    """Images whose class is their dominant colour, with noise: learnable in one epoch by any backbone."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLOURS[name], dtype=np.float64)
            img = base + rng.normal(0, 25, size=(size, size, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:02d}.png")
    return root


def add_broken_files(folder: Path) -> list[Path]:
    """A truncated JPEG, a zero-byte file and a text file named .jpg."""
    good = folder / "good.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(good, quality=90)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    good.unlink()
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_class_folder(tmp_path / "data")


@pytest.fixture(autouse=True, scope="session")
def _feature_cache_in_tmp(tmp_path_factory):
    """No test writes to the user's feature cache (~/.cache/headstart/features)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
        yield


def randomise_batchnorm(model):
    """Statistics and affine parameters of every BatchNorm away from their defaults, so that a wrong fold shows."""
    import torch  # torch: not at import time, so torch-free test modules collect without it
    from torch.nn.modules.batchnorm import _BatchNorm  # as torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def as_two_ranks(fn, shards: list) -> list:
    """``fn(*shard, reduce=all_reduce)`` on two threads standing in for two DDP ranks: ``all_reduce`` sums what
    both pass through a barrier, as torch.distributed's does. Returns each rank's result."""
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def rank(i: int) -> None:
        def all_reduce(t):
            slots[i] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read before the next call overwrites the slots
            return total

        results[i] = fn(*shards[i], reduce=all_reduce)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results
