"""Peak memory while extracting features of 10k and 50k images: flat, not growing with the count.

Each count runs in a fresh process, extracting into an empty cache, then streaming every feature back out of the
cache (what ``headstart embed`` does). A thread samples the main process's resident memory (``RssAnon``: memory of
its own; ``RssFile``: mapped file pages, which the kernel can drop) and the loader worker's.
50k x 1280 float32 features are 256 MB: if they were held in memory, the peak would grow by that much.

Small, fast setting (EfficientNet-Lite0 at 32 px): the figure under test is memory, not speed.

Example (about 4 minutes on 2 CPU cores, most of it writing and decoding 50k PNGs):

    python benchmarks/extraction_memory.py --counts 10000,50000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / VmHWM of a process, in MB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Sampler(threading.Thread):
    """Peak RssAnon/RssFile of this process and the peak RSS of its child processes, every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"anon": 0, "file": 0, "workers": 0}
        self.timeline: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        t0 = time.time()
        while not self._done.is_set():
            s = _status()
            self.peak["anon"] = max(self.peak["anon"], s.get("RssAnon", 0))
            self.peak["file"] = max(self.peak["file"], s.get("RssFile", 0))
            workers = sum(_status(c).get("VmRSS", 0) for c in _children(os.getpid()))
            self.peak["workers"] = max(self.peak["workers"], workers)
            self.timeline.append((time.time() - t0, s.get("RssAnon", 0)))
            time.sleep(0.05)

    def stop(self) -> None:
        self._done.set()
        self.join()


def child(paths_file: Path, n: int, image_size: int, batch_size: int, cache: Path) -> dict:
    import torch

    from headstart.core.runtime import make_runtime
    from headstart.features import extract_features
    from headstart.zoo.model import build_model

    paths = paths_file.read_text().splitlines()[:n]
    runtime = make_runtime("auto", "auto")
    model = build_model("efficientnet_lite0", 2)
    runtime.prepare(model)
    pre = model.spec.preprocessing(image_size)
    with torch.inference_mode(), runtime.autocast():  # warm-up, so the baseline includes the model's workspace
        model.forward_features(runtime.to_input(torch.zeros(batch_size, 3, image_size, image_size)))
    baseline = _status()
    sampler = Sampler()
    sampler.start()
    t0 = time.time()
    feats = extract_features(model, paths, pre, runtime, batch_size=batch_size, cache_dir=cache, verbose=False)
    t_extract = time.time() - t0
    extract_peak = dict(sampler.peak)
    total = 0.0
    for chunk in feats.chunks():  # stream every row back, as embed does
        total += float(chunk[:, 0].sum())
    sampler.stop()
    quarter = [a for t, a in sampler.timeline if t <= t_extract * 0.25]
    return {"images": len(feats), "seconds": round(t_extract, 1), "baseline_anon_mb": baseline.get("RssAnon"),
            "extract_peak_anon_mb": extract_peak["anon"], "extract_peak_file_mb": extract_peak["file"],
            "anon_at_25pct_mb": max(quarter) if quarter else None, "peak_anon_incl_read_mb": sampler.peak["anon"],
            "peak_file_incl_read_mb": sampler.peak["file"], "worker_peak_rss_mb": sampler.peak["workers"],
            "features_mb": round(len(feats) * feats.dim * 4 / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="10000,50000")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--child", nargs=3, metavar=("PATHS", "N", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        paths_file, n, cache = args.child
        print(json.dumps(child(Path(paths_file), int(n), args.image_size, args.batch_size, Path(cache))))
        return

    counts = [int(c) for c in args.counts.split(",")]
    from headstart.data import fashion_mnist

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        x, y = fashion_mnist.load("train")
        fashion_mnist.write_folder(x, y, np.arange(max(counts)), tmp / "images")
        paths = sorted(str(p) for p in (tmp / "images").rglob("*.png"))
        (tmp / "paths.txt").write_text("\n".join(paths))
        print(f"wrote {len(paths)} PNGs in {time.time() - t0:.0f} s; EfficientNet-Lite0 at {args.image_size} px, "
              f"batch {args.batch_size}", flush=True)
        rows = []
        for n in counts:
            res = subprocess.run([sys.executable, __file__, "--image-size", str(args.image_size), "--batch-size",
                                  str(args.batch_size), "--child", str(tmp / "paths.txt"), str(n),
                                  str(tmp / f"cache-{n}")], check=False, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr[-3000:])
                raise SystemExit(1)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  {n}: {rows[-1]}", flush=True)

    print(f"\n{'images':>7s} {'time':>7s} {'features':>9s} {'main RssAnon MB: before':>24s} {'peak':>6s} "
          f"{'at 25%':>7s} {'peak incl. read-back':>21s} {'RssFile peak':>13s} {'worker RSS':>11s}")
    for r in rows:
        print(f"{r['images']:7d} {r['seconds']:6.1f}s {r['features_mb']:7d}MB {r['baseline_anon_mb']:24d} "
              f"{r['extract_peak_anon_mb']:6d} {r['anon_at_25pct_mb'] or 0:7d} {r['peak_anon_incl_read_mb']:21d} "
              f"{r['peak_file_incl_read_mb']:13d} {r['worker_peak_rss_mb']:11d}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        growth = ((b["extract_peak_anon_mb"] - b["baseline_anon_mb"])
                  - (a["extract_peak_anon_mb"] - a["baseline_anon_mb"]))
        print(f"\npeak growth from {a['images']} to {b['images']} images: {growth} MB of own memory "
              f"({growth * 2**20 / max(1, b['images'] - a['images']):.0f} bytes per extra image; one feature row is "
              f"{1280 * 4} bytes)")


if __name__ == "__main__":
    main()
