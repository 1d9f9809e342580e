"""What a user waits for, as whole commands (a fresh process each, start-up included), side by side in one run.

Data: Fashion-MNIST as PNG files: 500 training images (50 per class; headstart holds 20% out for validation) and
1,000 test images from the official test set, EfficientNet-Lite0 (ImageNet weights, offline), 224 px unless
``--image-size`` says otherwise. The feature cache is a fresh folder, so "cold" is cold.

Measured:

- ``headstart --help``, ``--version``, a usage error (``--lr -1``) and ``headstart models``: start-up, no torch.
- ``headstart train --strategy linear-probe``: cold cache, then the same command again into another run (warm).
- ``headstart evaluate`` of that run on the 1,000 test images, twice (the second finds every feature in the cache
  and never imports torch), ``headstart predict`` of them from the cache, and ``evaluate --tta`` (which cannot use
  the cache: the full model, twice per image).
- ``headstart train --strategy fine-tune --epochs 3`` and its ``evaluate``: training throughput where it counts.
- in this process (``benchmarks/backbone_speed.py``): the backbone's eval forward each way (eager, BatchNorm
  folded, ONNX Runtime, bf16), the extraction pipeline against it at 64 px and at the run's size, and training
  steps of ``full`` and ``fine-tune`` in fp32 and bf16.

Example (about 8 minutes idle on 2 CPU cores at 224 px):

    python benchmarks/speed.py --out /tmp/speed

fastai on the same labelled images, with its own recipes, is ``benchmarks/fastai_compare.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="working folder (data, runs, cache, speed.json)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--fine-tune-epochs", type=int, default=3)
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
        print(f"{name:45s} {seconds:8.2f} s", flush=True)
        return done

    run("headstart --help", [*hs, "--help"])
    run("headstart --version", [*hs, "--version"])
    run("usage error (--lr -1)", [*hs, "train", str(data), "--out", str(out / "x"), "--lr", "-1"])
    run("headstart models", [*hs, "models"])
    size = ["--image-size", str(args.image_size)]
    for name, run_dir in (("train linear-probe, cold cache", "cold"), ("train linear-probe, warm cache", "warm")):
        run(name, [*hs, "train", str(data / "train"), "--out", str(out / run_dir), "--strategy", "linear-probe",
                   "--overwrite", *size, "--json"])
        rows[name]["val_acc"] = json.loads((out / run_dir / "summary.json").read_text())["val_acc"]
    for name in ("evaluate (1st)", "evaluate (2nd)"):
        done = run(name, [*hs, "evaluate", str(out / "cold"), str(data / "test"), "--json"])
        rows[name]["accuracy"] = json.loads(done.stdout)["accuracy"]
    # Features all cached: answered without torch (headstart/predict/cached.py).
    done = run("predict 1,000 test images (cached features)", [*hs, "predict", str(out / "cold"), str(data / "test"),
                                                                "--format", "json"])
    rows["predict 1,000 test images (cached features)"]["labelled"] = sum(
        1 for r in json.loads(done.stdout) if r.get("label"))
    # The same evaluate through folded PyTorch instead of ONNX Runtime, from an empty cache: the engines' parity.
    env_torch = {**env, "HEADSTART_ENGINE": "torch", "HEADSTART_CACHE": str(cache) + "-torch"}
    seconds, done = timed([*hs, "evaluate", str(out / "cold"), str(data / "test"), "--json", "--no-report"], env_torch)
    rows["evaluate, HEADSTART_ENGINE=torch, empty cache"] = {"seconds": round(seconds, 2),
                                                             "accuracy": json.loads(done.stdout)["accuracy"]}
    print(f"{'evaluate, HEADSTART_ENGINE=torch, empty cache':45s} {seconds:8.2f} s", flush=True)
    done = run("evaluate --tta (full model)", [*hs, "evaluate", str(out / "cold"), str(data / "test"), "--json",
                                                "--tta"])
    rows["evaluate --tta (full model)"]["accuracy"] = json.loads(done.stdout)["accuracy"]
    ft = f"train fine-tune, {args.fine_tune_epochs} epochs"
    run(ft, [*hs, "train", str(data / "train"), "--out", str(out / "ft"), "--strategy", "fine-tune", "--overwrite",
             "--epochs", str(args.fine_tune_epochs), *size, "--json"])
    rows[ft].update(_sgd_throughput(out / "ft"))
    done = run("evaluate fine-tune run", [*hs, "evaluate", str(out / "ft"), str(data / "test"), "--json"])
    rows["evaluate fine-tune run"]["accuracy"] = json.loads(done.stdout)["accuracy"]
    import backbone_speed

    for px in sorted({64, args.image_size}):
        rows[f"{px} px forward"] = backbone_speed.forward_variants(px)
        rows[f"{px} px extraction"] = backbone_speed.extraction(data / "test", px)
    rows["training steps, 224 px"] = backbone_speed.training_steps(args.image_size)
    rows["ratios"] = _ratios(rows, args)
    rows["machine"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    (out / "speed.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps({k: rows[k] for k in rows if "forward" in k or "extraction" in k or "steps" in k}, indent=1))
    print(json.dumps(rows["ratios"], indent=1))
    print(f"written {out / 'speed.json'}")


def _sgd_throughput(run_dir: Path) -> dict:
    """Training images/s of a run's SGD epochs (the fine-tuning phase), from its metrics.jsonl and split.json."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sgd = [r for r in records if "train_loss" in r]
    images = len(json.loads((run_dir / "split.json").read_text())["train"])
    seconds = sum(r["seconds"] for r in sgd)
    return {"sgd_epochs": len(sgd), "sgd_seconds": round(seconds, 2), "train_images": images,
            "train_images_per_second": images * len(sgd) / seconds if seconds else None,
            "test_acc": json.loads((run_dir / "summary.json").read_text()).get("test_acc")}


def _ratios(rows: dict, args) -> dict:
    size = args.image_size
    best = max(rows[f"{size} px forward"].values())
    cold = rows["train linear-probe, cold cache"]["seconds"]
    out = {"warm / cold train": rows["train linear-probe, warm cache"]["seconds"] / cold,
           "2nd / 1st evaluate": rows["evaluate (2nd)"]["seconds"] / rows["evaluate (1st)"]["seconds"],
           "evaluate (1st), share of the backbone's speed": (1000 / best) / rows["evaluate (1st)"]["seconds"],
           f"extraction / fastest forward, {size} px": rows[f"{size} px extraction"]["images_per_second"] / best,
           "extraction / fastest forward, 64 px": rows["64 px extraction"]["images_per_second"]
           / max(rows["64 px forward"].values())}
    return out


if __name__ == "__main__":
    main()
