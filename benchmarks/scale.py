"""Every command at 10,000 images and at the largest size that fits: wall time and peak RSS per stage.

    python benchmarks/scale.py make --root /tmp/headstart-scale --photos 100000      # the folders (under /tmp)
    python benchmarks/scale.py run --root /tmp/headstart-scale --data fmnist-10000 fmnist-70000 photos-10000 ...
    python benchmarks/scale.py ddp --root /tmp/headstart-scale --data photos-10000   # 1 process vs 2 Gloo

Datasets (``make``): Fashion-MNIST as PNG folders (``fmnist-10000``: 8,571 train + 1,429 test images;
``fmnist-70000``: the full 60,000 + 10,000) and photos (``photos-N``): scikit-image's colour sample pictures (one
class each) cropped at random (15-100% of the area), resized to 256 x 256, flipped, jittered in brightness,
contrast and saturation, with sensor noise, saved as JPEGs at quality 80-95; 6/7 train, 1/7 test.

Stages (``run``), each a fresh ``headstart`` process whose peak RSS is read from ``wait4``: ``check`` of the train
folder; a linear-probe ``train`` with an empty feature cache (cold: check, extraction, head) and again with the
cache filled (warm); ``evaluate`` and ``predict`` of the test folder. The extraction's own rate is read from the
cold train's progress line and set against the backbone's throughput on this machine (features/speed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "cat",
          "colorwheel", "logo")
SIDE = 256


def make_fmnist(out: Path, total: int) -> None:
    from headstart.data.fashion_mnist import load, write_folder

    x, y = load("train")
    xt, yt = load("test")
    n_test = total // 7 if total < 70_000 else len(yt)
    rng = np.random.default_rng(0)
    write_folder(x, y, np.sort(rng.permutation(len(y))[: total - n_test]), out / "train")
    write_folder(xt, yt, np.sort(rng.permutation(len(yt))[:n_test]), out / "test", prefix="t")


def _sources() -> list[np.ndarray]:
    import skimage.data

    return [np.asarray(Image.fromarray(getattr(skimage.data, n)()).convert("RGB")) for n in PHOTOS]


def _photo(src: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = src.shape[:2]
    area = rng.uniform(0.15, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = min(h, int(np.sqrt(area / aspect))), min(w, int(np.sqrt(area * aspect)))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    im = Image.fromarray(src[top:top + ch, left:left + cw]).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhance(im).enhance(rng.uniform(0.7, 1.3))
    noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, rng.uniform(0, 8), (SIDE, SIDE, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _write_photos(job: tuple[Path, int, int, int]) -> None:
    out, start, stop, test_from = job
    sources = _sources()
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        label = i % len(PHOTOS)
        folder = out / ("test" if i >= test_from else "train") / PHOTOS[label]
        folder.mkdir(parents=True, exist_ok=True)
        _photo(sources[label], rng).save(folder / f"{i:06d}.jpg", quality=int(rng.integers(80, 96)))


def make_photos(out: Path, total: int, processes: int = 2) -> None:
    test_from = total - total // 7
    step = 2000
    with Pool(processes) as pool:
        pool.map(_write_photos, [(out, s, min(total, s + step), test_from) for s in range(0, total, step)])


def timed(cmd: list[str], env: dict, log: Path) -> dict:
    """Runs ``cmd``; wall seconds and peak RSS (MB) of that process (wait4's rusage is its own)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024), "exit": status >> 8,
            "cmd": " ".join(cmd[2:])}


def feature_rate(log: Path) -> float | None:
    """The extraction's img/s as its last progress line says (``features (train): 1234/5678 images (321.0/s``)."""
    rates = re.findall(r"features \(train\)[^\n]*?\(([\d.]+) img/s", log.read_text())
    return float(rates[-1]) if rates else None
