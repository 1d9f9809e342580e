"""`train --budget` against today's default and against each candidate alone, as whole commands (issue 23).

For each data set and seed, every arm is one whole `headstart train` command, timed as its user waits for it,
each from a cold feature cache (the speed figures `headstart models --measure` and `--budget` remember are kept
between runs, as on a user's machine after the first):

- `default`: `headstart train DATA` (strategy auto, EfficientNet-Lite0 at 224 px);
- `probe <backbone> @ <px>`: each offline candidate alone, `--strategy linear-probe --model B --image-size S`;
- `--choose balanced --budget B` for each budget in `--budgets`.

Every arm writes its report, as the command does by default. Records test accuracy (never seen by any choice),
what the run chose and shipped, wall time, and the machine's load average when the arm started (a run that shared
the CPU is labelled by it: a budget buys fewer epochs then).

Data sets: Fashion-MNIST at `--labels` per class (train + 10 val per class from the training set, 1,000 test
images), scikit-learn's digits (1,797 8x8 images as 32 px PNGs, a stratified third held out as test by seed;
headstart takes validation from the rest) and
scikit-image textures: 64 px patches of six real pictures (brick, grass, gravel, a retina, stained tissue, the Hubble
deep field), each class's train/validation patches from the top 60% of its picture and its test patches from the
bottom 40%, so no test patch overlaps a training one.

    python benchmarks/budget.py --out /tmp/budget --labels 10 50 --seeds 0 1 2 --budgets 1m 3m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from backbone_candidates import CANDIDATES, make_sets, timed_train  # noqa: E402  (the same folders and command)

TEXTURES = ["brick", "grass", "gravel", "retina", "immunohistochemistry", "hubble_deep_field"]


def write_textures(folder: Path, per_class: int, seed: int, side: int = 64, test_per_class: int = 60) -> Path:
    """The texture set above: ``train/`` (``per_class``) and ``val/`` (10) patches from the top 60% of each
    picture, ``test/`` from the bottom 40%, as greyscale-or-colour PNGs as the picture is."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in TEXTURES:
        picture = getattr(skimage.data, name)()
        cut = int(picture.shape[0] * 0.6)
        for split, n, (top, bottom) in (("train", per_class, (0, cut)), ("val", 10, (0, cut)),
                                        ("test", test_per_class, (cut, picture.shape[0]))):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                y = rng.integers(top, bottom - side + 1)
                x = rng.integers(0, picture.shape[1] - side + 1)
                Image.fromarray(picture[y:y + side, x:x + side]).save(folder / split / name / f"{i:03d}.png")
    return folder


def write_digits_split(folder: Path, seed: int, side: int = 32) -> Path:
    """scikit-learn's digits as ``train/`` (2/3, headstart takes validation from it) and ``test/`` (1/3),
    stratified by seed: a flat folder would give headstart no test split."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train, test = train_test_split(idx, test_size=1 / 3, stratify=digits.target, random_state=seed)
    for split, members in (("train", train), ("test", test)):
        for i in members:
            (folder / split / str(digits.target[i])).mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)  # digits are 0-16
            Image.fromarray(pixels, mode="L").resize((side, side), Image.BICUBIC).save(
                folder / split / str(digits.target[i]) / f"{i:04d}.png")
    return folder


def arms(budgets: list[str]) -> dict[str, tuple[list[str], str | None]]:
    """Arm name -> (extra arguments, the strategy named or None for auto)."""
    out = {"default (auto, Lite0 224 px)": ([], None)}
    out |= {f"probe {b} @ {s} px": (["--model", b, "--image-size", str(s)], "linear-probe") for b, s in CANDIDATES}
    out |= {f"--choose balanced --budget {b}": (["--choose", "balanced", "--budget", b], None) for b in budgets}
    return out


def run_arm(folder: Path, extra: list[str], strategy: str | None, seed: int, out: Path, speeds: Path) -> dict:
    cache = out.with_name(out.name + ".cache")
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    if speeds.exists():
        shutil.copy(speeds, cache / "speeds.json")
    load = os.getloadavg()[0]
    got = timed_train(folder, extra, seed, out, cache, strategy=strategy, report=True)
    if (cache / "speeds.json").exists():
        shutil.copy(cache / "speeds.json", speeds)
    shutil.rmtree(cache, ignore_errors=True)
    if "error" in got:
        return {"error": got["error"], "load_at_start": load}
    s, c = got["summary"], got["config"]
    return {"model": c["model"], "size": c["preprocessing"]["image_size"], "strategy": s.get("strategy"),
            "shipped_phase": s.get("best_phase"), "epochs_planned": (c.get("budget_plan") or {}).get("epochs"),
            "stopped_by_budget": (s.get("budget") or {}).get("stopped_by_budget"),
            "budget_spent_s": (s.get("budget") or {}).get("spent_s"), "val_acc": s.get("val_acc"),
            "test_acc": got["test"].get("accuracy"), "wall_s": got["wall_s"], "load_at_start": round(load, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=["1m", "3m"])
    ap.add_argument("--sets", nargs="+", default=None, help="only the sets whose names start with these words")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file, speeds = args.out / "budget.json", args.out / "speeds.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    done = {(r["set"], r["arm"], r["seed"]) for r in results}
    for seed in args.seeds:
        sets = {k: v for k, v in make_sets(args.out / "data", args.labels, seed, test_images=1000).items()
                if not k.startswith("digits")}  # a flat folder: no test split
        digits = args.out / "data" / f"digits-split-seed{seed}"
        sets["digits (sklearn), 1,198 train / 599 test"] = digits if digits.exists() else \
            write_digits_split(digits, seed)
        textures = args.out / "data" / f"textures-seed{seed}"
        sets["scikit-image textures, 20 patches/class"] = textures if textures.exists() else \
            write_textures(textures, 20, seed)
        for name, folder in sets.items():
            if args.sets and not any(name.startswith(w) for w in args.sets):
                continue
            for arm, (extra, strategy) in arms(args.budgets).items():
                if (name, arm, seed) in done:
                    continue
                t = time.strftime("%H:%M:%S")
                r = {"set": name, "arm": arm, "seed": seed, "started": t,
                     **run_arm(folder, extra, strategy, seed, args.out / "run", speeds)}
                results.append(r)
                print(json.dumps(r), flush=True)
                results_file.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
