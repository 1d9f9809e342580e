"""What a user waits for, as whole commands (a fresh process each, start-up included), side by side in one run.

Data: Fashion-MNIST as PNG files: 500 training images (50 per class; headstart holds 20% out for validation) and
1,000 test images from the official test set, EfficientNet-Lite0 (ImageNet weights, offline), 224 px unless
``--image-size`` says otherwise. The feature cache is a fresh folder, so "cold" is cold.

Measured:

- ``headstart --help``, ``--version`` and a usage error (``--lr -1``): start-up, no torch import.
- ``headstart train --strategy linear-probe``: cold cache, then the same command again into another run (warm).
- ``headstart evaluate`` of that run on the 1,000 test images, twice (the first may already hit: ``train``'s own
  test pass cached them), and once with ``--tta`` (which cannot use the cache: the full model, twice per image).
- the backbone's own throughput in this process (fp32 or bf16 as ``auto`` picks, channels-last, batch 32):
  the ceiling for any command that must run the backbone.

Example (about 3 minutes idle on 2 CPU cores at 224 px):

    python benchmarks/speed.py --out /tmp/speed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, done


def backbone_throughput(image_size: int, batches: int = 6, batch: int = 32) -> dict:
    import torch

    from headstart.core.runtime import make_runtime
    from headstart.model import build_model

    runtime = make_runtime("cpu")
    model = runtime.prepare(build_model("efficientnet_lite0", 10)).eval()
    x = runtime.to_input(torch.randn(batch, 3, image_size, image_size))
    with torch.inference_mode(), runtime.autocast():
        model.forward_features(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            model.forward_features(x)
    seconds = time.perf_counter() - t0
    return {"images_per_second": batches * batch / seconds, "runtime": runtime.describe()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="working folder (data, runs, cache, speed.json)")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "train").is_dir():
        from headstart.data.fashion_mnist import make_image_folder

        make_image_folder(data, train_per_class=50, val_per_class=0, test_images=1000, seed=0)
    cache = out / f"cache-{time.time_ns()}"
    env = {**os.environ, "HEADSTART_CACHE": str(cache)}
    hs = [sys.executable, "-m", "headstart"]
    rows: dict[str, dict] = {}

    def run(name: str, cmd: list[str]) -> subprocess.CompletedProcess:
        seconds, done = timed(cmd, env)
        if done.returncode not in (0, 2):
            raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
        rows[name] = {"seconds": round(seconds, 2)}
        print(f"{name:40s} {seconds:8.2f} s", flush=True)
        return done

    run("headstart --help", [*hs, "--help"])
    run("headstart --version", [*hs, "--version"])
    run("usage error (--lr -1)", [*hs, "train", str(data), "--out", str(out / "x"), "--lr", "-1"])
    size = ["--image-size", str(args.image_size)]
    for name, run_dir in (("train linear-probe, cold cache", "cold"), ("train linear-probe, warm cache", "warm")):
        run(name, [*hs, "train", str(data / "train"), "--out", str(out / run_dir), "--strategy", "linear-probe",
                   "--overwrite", *size, "--json"])
        summary = json.loads((out / run_dir / "summary.json").read_text())
        rows[name]["val_acc"] = summary["val_acc"]
    for name in ("evaluate (1st)", "evaluate (2nd)"):
        done = run(name, [*hs, "evaluate", str(out / "cold"), str(data / "test"), "--json"])
        rows[name]["accuracy"] = json.loads(done.stdout)["accuracy"]
    done = run("evaluate --tta (full model)", [*hs, "evaluate", str(out / "cold"), str(data / "test"), "--json",
                                                "--tta"])
    rows["evaluate --tta (full model)"]["accuracy"] = json.loads(done.stdout)["accuracy"]
    rows["backbone alone"] = backbone_throughput(args.image_size)
    cold = rows["train linear-probe, cold cache"]["seconds"]
    rows["ratios"] = {"warm / cold train": rows["train linear-probe, warm cache"]["seconds"] / cold,
                      "2nd / 1st evaluate": rows["evaluate (2nd)"]["seconds"] / rows["evaluate (1st)"]["seconds"],
                      "1,000 test images at backbone speed (s)": 1000 / rows["backbone alone"]["images_per_second"]}
    rows["machine"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    (out / "speed.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows["ratios"], indent=1))
    print(f"backbone alone: {rows['backbone alone']['images_per_second']:.1f} img/s "
          f"({rows['backbone alone']['runtime']}); written {out / 'speed.json'}")


if __name__ == "__main__":
    main()
