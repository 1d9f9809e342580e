"""headstart against fastai's own recipes, as whole commands on the same labelled images, side by side in one run.

Data: a Fashion-MNIST folder (``headstart/data/fashion_mnist.py``): ``train/`` 400 images and ``val/`` 100 (40 and
10 per class, from the official training set), ``test/`` 1,000 (100 per class, from the official test set). Both
sides get these folders as they are: the same 500 labelled images, split the same way, and the same test images.
EfficientNet-Lite0 with the same ImageNet weights (headstart's offline package) at headstart's default 224 px.

Each command is timed whole, in a fresh process (start-up, data loading, training, predicting the 1,000 test
images): ``headstart train DATA --strategy S`` (its test step scores ``test/``), and
``benchmarks/fastai_baseline.py`` with the python of a separate fastai venv. Every command runs pinned to one core
(``taskset -c CORE``) with ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to ``--threads`` on both sides.

Rows, in order (each appended to ``fastai_compare.json`` as it finishes; a second run with the same ``--out`` skips
rows already there, ``--only`` picks some, and ``--only "headstart linear-probe (run 2)"`` repeats a headstart row):

1. headstart ``linear-probe``, ``fine-tune`` and ``full`` with their defaults (10 epochs at most, early stopping);
2. fastai ``fine_tune`` with its defaults, at the epochs a fastai user would choose (3) and at the epochs
   headstart's ``fine-tune`` ran (read from its ``metrics.jsonl``);
3. fastai ``lr_find`` then frozen ``fit_one_cycle(5)``; ``lr_find`` then ``fine_tune(3)``;
4. the same at the epochs of headstart's ``full``, ``lr_find`` then ``fine_tune`` at headstart's epochs, and frozen
   ``fit_one_cycle(5)`` at fastai's default learning rate.

    python benchmarks/fastai_compare.py --out /tmp/fc --fastai-python /tmp/fastai-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def headstart_figures(run_dir: Path) -> dict:
    """A headstart run's test figure, what it counted, and the SGD epochs it trained (early stopping included)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sgd_epochs = sum(1 for r in records if "train_loss" in r)
    return {"test_acc": summary.get("test_acc"), "val_acc": summary.get("val_acc"),
            "test_images": json.loads((run_dir / "test_metrics.json").read_text())["num_images"],
            "train_images": summary.get("train_images"), "val_images": summary.get("val_images"),
            "excluded_val": summary["leakage"]["excluded_val"], "excluded_test": summary["leakage"]["excluded_test"],
            "refit": summary.get("refit"), **({"epochs": sgd_epochs} if sgd_epochs else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="working folder (data, runs, fastai_compare.json)")
    ap.add_argument("--fastai-python", help="python of a venv with fastai (needed unless --table)")
    ap.add_argument("--core", default="1", help="taskset's CPU list for every timed command")
    ap.add_argument("--threads", default="1", help="OMP_NUM_THREADS / MKL_NUM_THREADS on both sides")
    ap.add_argument("--only", default="", help="comma-separated row names to run (default: every row)")
    ap.add_argument("--table", action="store_true", help="print the table of OUT/fastai_compare.json and stop")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(json.loads((out / "fastai_compare.json").read_text())))
        return
    if not args.fastai_python:
        ap.error("--fastai-python is needed to run the fastai side, e.g. --fastai-python /tmp/fastai-venv/bin/python")
    data = out / "data"
    if not (data / "train").is_dir():
        sys.path.insert(0, str(HERE.parent))
        from headstart.data.fashion_mnist import make_image_folder

        make_image_folder(data, train_per_class=40, val_per_class=10, test_images=1000, seed=0)
    result_file = out / "fastai_compare.json"
    results = json.loads(result_file.read_text()) if result_file.exists() else {"rows": {}}
    rows = results["rows"]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "MKL_NUM_THREADS": args.threads,
           "HEADSTART_CACHE": str(out / f"cache-{time.time_ns()}"), "PYTHONPATH": str(HERE.parent)}
    pin = ["taskset", "-c", args.core]
    results["setup"] = {"pinned": " ".join(pin), "threads": args.threads, "cpus": os.cpu_count(),
                        "machine": platform.processor() or platform.machine(), "data": str(data),
                        "note": "wall times: one pinned core, machine shared with other jobs"}

    def run(name: str, cmd: list[str]) -> dict | None:
        if name in rows or (only and name not in only):
            return rows.get(name)
        load = os.getloadavg()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([*pin, *cmd], env=env, capture_output=True, text=True, cwd=out)
        seconds = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            print(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}", flush=True)
            return None
        # CPU seconds (the command and its loader workers) vary less than wall time on a shared core.
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        rows[name] = {"command": " ".join(cmd), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                      "load_average_before": [round(x, 2) for x in load], "stdout_tail": done.stdout[-2000:]}
        result_file.write_text(json.dumps(results, indent=1))
        print(f"{name:50s} {seconds:8.1f} s", flush=True)
        return rows[name]

    hs = [sys.executable, "-m", "headstart", "train", str(data)]
    epochs = {}
    for strategy in ("linear-probe", "fine-tune", "full"):
        for again, suffix in ((False, ""), (True, " (run 2)")):  # run 2: only when --only names it
            if again and f"headstart {strategy}{suffix}" not in only:
                continue
            run_dir = out / f"hs-{strategy}{'-2' if again else ''}"
            row = run(f"headstart {strategy}{suffix}", [*hs, "--strategy", strategy, "--out", str(run_dir),
                                                        "--overwrite", "--json"])
            if row and (run_dir / "summary.json").exists():
                row.update(headstart_figures(run_dir))
                if strategy != "linear-probe" and not again:
                    epochs[strategy] = row["epochs"]
                result_file.write_text(json.dumps(results, indent=1))

    fa = [args.fastai_python, str(HERE / "fastai_baseline.py"), "--data", str(data)]
    fine_tune_epochs = sorted({3, *epochs.values()})

    def fastai(name: str, extra: list[str]) -> None:
        row = run(name, [*fa, *extra])
        if row and "fastai" not in row:
            row["fastai"] = json.loads(row["stdout_tail"].strip().splitlines()[-1])
            row["test_acc"] = row["fastai"]["test_acc"]
            result_file.write_text(json.dumps(results, indent=1))

    # The most informative first, for when the time runs out: fastai's defaults at a fastai user's epochs and at
    # headstart's fine-tune's, lr_find for the frozen body and for fine_tune(3), then the rest.
    first = [3, *[e for e in (epochs.get("fine-tune"),) if e and e != 3]]
    for e in first:
        fastai(f"fastai fine_tune({e})", ["--recipe", "fine_tune", "--epochs", str(e)])
    fastai("fastai lr_find + fit_one_cycle(5) frozen", ["--recipe", "fit_one_cycle", "--epochs", "5", "--lr-find"])
    fastai("fastai lr_find + fine_tune(3)", ["--recipe", "fine_tune", "--epochs", "3", "--lr-find"])
    for e in fine_tune_epochs:
        fastai(f"fastai fine_tune({e})", ["--recipe", "fine_tune", "--epochs", str(e)])
    for e in fine_tune_epochs:
        fastai(f"fastai lr_find + fine_tune({e})", ["--recipe", "fine_tune", "--epochs", str(e), "--lr-find"])
    fastai("fastai fit_one_cycle(5) frozen", ["--recipe", "fit_one_cycle", "--epochs", "5"])
    results["headstart_epochs"] = epochs
    result_file.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict) -> str:
    """The rows as the Markdown table of the README and docs/measurements/fastai_compare.md."""
    lines = ["| side | recipe | epochs | wall time, s | CPU time, s | load average at start | test accuracy "
             "(1,000 images) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, row in results["rows"].items():
        side, recipe = name.split(" ", 1)
        if side == "headstart":
            strategy, _, again = recipe.partition(" (")
            recipe = f"`train --strategy {strategy}`" + (f" ({again}" if again else "")
            epochs = row.get("epochs", "none (L-BFGS head)")
        else:
            fa = row["fastai"]
            lr = f" (lr {fa['lr']:.1e})" if fa.get("lr") else ""
            recipe = f"`{recipe}`{lr}"
            epochs = fa["epochs_run"]
        cpu = f"{row['cpu_seconds']:.0f}" if row.get("cpu_seconds") else "not recorded"
        lines.append(f"| {side} | {recipe} | {epochs} | {row['seconds']:.1f} | {cpu} | "
                     f"{row['load_average_before'][0]:.1f} | {100 * row['test_acc']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
