"""`train --choose` against today's default, as whole commands (issue 23).

For each data set and seed: `headstart train --strategy linear-probe` with the default backbone (EfficientNet-Lite0
at 224 px), with `--choose fast` and with `--choose balanced`, each from a cold feature cache (the speed figures of
`headstart models --measure` are kept between runs, as on a user's machine after the first). Records the chosen
candidate, test accuracy (never seen by the choice) and wall time. Data sets as in backbone_candidates.py.

    python benchmarks/backbone_choice.py --out /tmp/choice --labels 10 50 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from backbone_candidates import make_sets  # noqa: E402  (the same folders)

ARMS = {"default (Lite0 224 px)": [], "--choose fast": ["--choose", "fast"],
        "--choose balanced": ["--choose", "balanced"]}


def run_arm(folder: Path, extra: list[str], seed: int, out: Path, speeds: Path) -> dict:
    cache = out.with_name(out.name + ".cache")
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    if speeds.exists():
        shutil.copy(speeds, cache / "speeds.json")
    cmd = [sys.executable, "-m", "headstart", "train", str(folder), "--strategy", "linear-probe", "--seed", str(seed),
           "--out", str(out), "--overwrite", "--no-report", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "HEADSTART_CACHE": str(cache)})
    wall = time.perf_counter() - start
    if (cache / "speeds.json").exists():
        shutil.copy(cache / "speeds.json", speeds)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    config = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    test = json.loads((out / "test_metrics.json").read_text()) if (out / "test_metrics.json").exists() else {}
    summary = json.loads((out / "summary.json").read_text())
    return {"model": config["model"], "size": config["preprocessing"]["image_size"], "val_acc": summary.get("val_acc"),
            "test_acc": test.get("accuracy"), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, speeds = [], args.out / "speeds.json"
    for seed in args.seeds:
        for name, folder in make_sets(args.out / "data", args.labels, seed).items():
            for arm, extra in ARMS.items():
                r = {"set": name, "arm": arm, "seed": seed, **run_arm(folder, extra, seed, args.out / "run", speeds)}
                results.append(r)
                print(json.dumps(r), flush=True)
                (args.out / "choice.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
