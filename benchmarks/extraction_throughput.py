"""End-to-end feature extraction (image files on disk -> cached features) against the backbone alone.

Measured side by side, interleaved so that a busy machine slows all of them alike:

  * ``backbone``: ``forward_features`` on a ready batch in memory (same batch size, precision, channels-last);
  * ``headstart``: ``headstart.features.extract_features`` with an empty cache: hash, decode, resize and crop in a
    loader worker, normalise per batch, backbone, write the cache;
  * ``float loader``: the plain way, ``ImageFiles`` + ``eval_transform`` (float32 per image) in the same loader,
    then the backbone (what ``fit_linear_probe`` did before the cache).

Also the cost per image of each preprocessing step on one core, next to the backbone's cost per image.

Example (about 3 minutes on 2 CPU cores; Fashion-MNIST from the Debian package dataset-fashion-mnist):

    python benchmarks/extraction_throughput.py --images 1024
    python benchmarks/extraction_throughput.py --images 512 --source jpeg   # 500x375 JPEGs from scikit-image
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headstart.core.runtime import make_runtime
from headstart.data.dataset import ImageFiles, default_workers, make_loader
from headstart.data.images import load_image
from headstart.data.transforms import eval_resize_crop, eval_transform, to_float_normalized
from headstart.features import extract_features
from headstart.features.extract import _Collate
from headstart.training.probe import features_from_loader
from headstart.zoo.model import build_model


def write_fashion_mnist(folder: Path, n: int) -> list[str]:
    from headstart.data import fashion_mnist

    x, y = fashion_mnist.load("train")
    fashion_mnist.write_folder(x, y, np.arange(n), folder)
    return sorted(str(p) for p in folder.rglob("*.png"))


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """500x375 JPEGs (quality 90): random crops and scales of scikit-image's colour photographs."""
    from skimage import data

    photos = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)])
        s = rng.uniform(0.6, 1.0)
        w, h = int(im.width * s), int(im.height * s)
        x0, y0 = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
        path = folder / f"{i:05d}.jpg"
        im.crop((x0, y0, x0 + w, y0 + h)).resize((500, 375), Image.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@torch.inference_mode()
def backbone_only(model, runtime, batch: torch.Tensor, n: int) -> float:
    """Seconds for the backbone alone to process ``n`` images in batches like ``batch``."""
    t0 = time.perf_counter()
    for _ in range(max(1, n // len(batch))):
        with runtime.autocast():
            model.forward_features(batch)
    return time.perf_counter() - t0


def per_image_costs(paths: list[str], pre: dict, runtime, k: int = 100) -> dict[str, float]:
    """Milliseconds per image on one core for each preprocessing step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    paths = paths[:k]
    out = {}
    t0 = time.perf_counter()
    images = [load_image(p) for p in paths]
    out["decode"] = (time.perf_counter() - t0) / len(paths) * 1e3
    geometry = eval_resize_crop(pre)
    t0 = time.perf_counter()
    crops = [geometry(im) for im in images]
    out["resize+crop (uint8)"] = (time.perf_counter() - t0) / len(paths) * 1e3
    norm = to_float_normalized(pre)
    t0 = time.perf_counter()
    for c in crops:
        norm(c)
    out["to float + normalise, per image"] = (time.perf_counter() - t0) / len(paths) * 1e3
    collate = _Collate(pre, to_float=True, channels_last=runtime.channels_last)
    items = [(c, "") for c in crops[:32]]
    t0 = time.perf_counter()
    for _ in range(5):
        collate(items)
    out["to float + normalise into channels-last batch"] = (time.perf_counter() - t0) / (5 * len(items)) * 1e3
    torch.set_num_threads(threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--source", choices=["fashion-mnist", "jpeg"], default="fashion-mnist")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help=f"loader workers (default {default_workers()})")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-float-loader", action="store_true", help="skip the plain float-loader pipeline")
    args = ap.parse_args()

    runtime = make_runtime("auto", "auto")
    model = build_model(args.model, 2)
    runtime.prepare(model).eval()
    pre = model.spec.preprocessing(args.image_size)
    workers = default_workers() if args.workers is None else args.workers
    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, {runtime.describe()}, "
          f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"{workers} loader worker(s); {args.images} {args.source} images; load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        writer = write_jpegs if args.source == "jpeg" else write_fashion_mnist
        paths = writer(tmp / "images", args.images)
        print(f"wrote {len(paths)} files in {time.perf_counter() - t0:.1f} s")

        costs = per_image_costs(paths, pre, runtime)
        batch = runtime.to_input(torch.randn(args.batch_size, 3, args.image_size, args.image_size))
        with torch.inference_mode(), runtime.autocast():
            for _ in range(3):
                model.forward_features(batch)  # warm-up: oneDNN picks its kernels on the first calls

        results: dict[str, list[float]] = {"backbone": [], "headstart": [], "float loader": []}
        cpu: dict[str, list[float]] = {k: [] for k in results}  # CPU ms per image, all processes
        n = (len(paths) // args.batch_size) * args.batch_size

        def timed(name, fn, *args, **kwargs):
            t0, c0 = time.perf_counter(), cpu_seconds()
            fn(*args, **kwargs)
            results[name].append(n / (time.perf_counter() - t0))
            cpu[name].append((cpu_seconds() - c0) / n * 1e3)

        for r in range(args.repeats):
            timed("backbone", backbone_only, model, runtime, batch, n)
            timed("headstart", extract_features, model, paths[:n], pre, runtime, batch_size=args.batch_size,
                  workers=workers, cache_dir=tmp / f"cache{r}", verbose=False)  # an empty cache: all computed
            if not args.no_float_loader:
                loader = make_loader(ImageFiles([(p, 0) for p in paths[:n]], eval_transform(pre)), args.batch_size,
                                     shuffle=False, workers=workers)
                timed("float loader", features_from_loader, model, loader, runtime)
            print(f"  repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items() if v)
                  + f"  (load average {os.getloadavg()[0]:.1f})", flush=True)

    backbone_ms = 1e3 / statistics.median(results["backbone"]) * torch.get_num_threads()
    print("\nper image, one core (ms):")
    for k, v in costs.items():
        print(f"  {k:46s} {v:7.3f}")
    print(f"  {'backbone (core-ms: wall x threads)':46s} {backbone_ms:7.3f}")
    print("\nthroughput, median of repeats (img/s), and CPU time per image of all processes (ms):")
    pure = statistics.median(results["backbone"])
    for k, v in results.items():
        if v:
            print(f"  {k:14s} {statistics.median(v):7.1f} img/s  ratio to backbone {statistics.median(v) / pure:.3f}"
                  f"  (per repeat: {', '.join(f'{x / b:.3f}' for x, b in zip(v, results['backbone']))})"
                  f"   CPU {statistics.median(cpu[k]):6.1f} ms/img")
    ratios = [x / b for x, b in zip(results["headstart"], results["backbone"])]
    print(f"\nend-to-end / backbone = {statistics.median(results['headstart']) / pure:.3f} (ratio of medians), "
          f"{statistics.median(ratios):.3f} (median of per-repeat ratios); target >= 0.9")
    cpu_ratio = statistics.median(cpu["backbone"]) / statistics.median(cpu["headstart"])
    print(f"CPU time, backbone / end-to-end = {cpu_ratio:.3f}"
          " (the ratio the pipeline would reach with the cores to itself)")


if __name__ == "__main__":
    main()
