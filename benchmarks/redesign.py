"""Before/after benchmark of a redesign: the same CLI commands timed on two (or more) checkouts of headstart.

Each checkout's own code runs: every command is ``<python> -m headstart ...`` with ``PYTHONPATH=<checkout>`` from a
temporary working directory (so neither the current directory nor the editable install decides which code runs;
each checkout's ``headstart.__file__`` is recorded). The checkouts are interleaved round by round (the order
alternates between rounds) so that they see the same machine load; each timed item is the median over the rounds
of the wall seconds of the whole command (a fresh process).

Measured per checkout:

1. ``headstart --help`` and the floor ``python -c 'import torch'``.
2. ``headstart train DATA --strategy linear-probe --image-size S``: cold (``HEADSTART_CACHE`` pointing at a fresh,
   empty folder) and warm (the same command again, into a new run folder, every feature cached).
3. ``headstart evaluate RUN TEST --json`` on 1,000 test images, cold (fresh empty cache) and warm (again), also as
   a share of the backbone's own throughput: a plain eager torch forward pass of the same backbone at the same
   resolution and batch (evaluate's default 64) in the precision headstart picks (``make_runtime('auto')``),
   measured in the same round (img/s of the median batch over as many batches as test images).
4. ``headstart predict RUN TEST --format json`` on the same 1,000 images, cold and warm.
5. ``headstart export RUN`` (ONNX), then ``headstart predict`` with the run and with the .onnx on 256 test images
   (``--format json --topk 10``, fresh cache for the run so its model computes the features): the largest
   absolute difference in the top score and in any class probability (scores are printed rounded to 6 decimals).
   On a CPU with native bf16 the run computes in bf16 autocast while the .onnx runs fp32 (and preprocesses with
   numpy/PIL instead of torchvision), so this is larger than export's own fp32 parity check.
6. Lines of package code (non-blank lines of headstart/**/*.py) and the number of modules.

Data: Fashion-MNIST from its idx files (``/usr/share/datasets/fashion-mnist``), read here without importing
headstart: ``DATA/train`` and ``DATA/val`` with 40 + 10 labelled images per class (50 labelled per class), and a
separate labelled ``TEST`` folder of 1,000 images of the official test set (100 per class), written as PNGs.

    python benchmarks/redesign.py --checkout before=/tmp/before --checkout after=/work/main --out redesign.json

Only the CLI is used; the one exception is the backbone-throughput subprocess, which imports ``build_model``
through :data:`BACKBONE_HELPER` (``headstart.zoo`` + ``.model``, else ``headstart`` + ``.model``: whichever
the checkout has).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]

# Runs in a subprocess with PYTHONPATH=<checkout>: argv = model, image size, batch, images; prints one JSON line.
BACKBONE_HELPER = r"""
import json, os, sys, time, contextlib
import torch
import importlib
# Module names spelled in parts: a tree-wide rename of one layout's import path must not turn this into the other.
for parts in (("headstart", "zoo", "model"), ("headstart", "model")):
    try:
        build_model = importlib.import_module(".".join(parts)).build_model
        break
    except ImportError:
        continue
else:
    raise ImportError("build_model: neither of the two known module layouts")
name, size, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
amp, channels_last, how = None, True, "headstart make_runtime('auto')"
try:
    try:
        from headstart.core.runtime import make_runtime
    except ImportError:
        from headstart.runtime import make_runtime
    rt = make_runtime("auto", "auto")
    amp, channels_last = rt.amp_dtype, rt.channels_last
except Exception as exc:  # the rule headstart documents: bf16 where the CPU computes it natively
    flags = open("/proc/cpuinfo").read()
    amp = torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None
    how = f"cpuinfo rule ({type(exc).__name__}: {exc})"
    torch.set_num_threads(len(os.sched_getaffinity(0)))
model = build_model(name, 10, pretrained=False).eval()
if channels_last:
    model = model.to(memory_format=torch.channels_last)
x = torch.randn(batch, 3, size, size)
if channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
ctx = (lambda: torch.autocast("cpu", dtype=amp)) if amp is not None else contextlib.nullcontext
with torch.inference_mode(), ctx():
    model(x)  # warm-up
    times = []
    for _ in range(max(1, n // batch)):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
dt = sorted(times)[len(times) // 2]  # median batch: robust to other processes' bursts on a shared machine
print(json.dumps({"img_per_s": batch / dt, "images": len(times) * batch, "seconds": sum(times),
                  "img_per_s_mean": len(times) * batch / sum(times), "img_per_s_best": batch / min(times),
                  "precision": str(amp).removeprefix("torch.") if amp is not None else "fp32",
                  "channels_last": channels_last, "threads": torch.get_num_threads(), "precision_from": how}))
"""


# ---------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        _zero, _dtype, ndim = struct.unpack(">HBB", f.read(4))
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def write_pngs(images, labels, indices, folder: Path, labelled: bool = True, prefix: str = "") -> None:
    for i in indices:
        sub = folder / CLASSES[labels[i]] if labelled else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(sub / f"{prefix}{i:05d}.png")


def make_data(root: Path, train_per_class: int, val_per_class: int, test_images: int, parity_images: int,
              seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x, y = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    xt, yt = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    train, val, test = [], [], []
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(y == c))
        train += list(idx[:train_per_class])
        val += list(idx[train_per_class:train_per_class + val_per_class])
        test += list(rng.choice(np.flatnonzero(yt == c), test_images // len(CLASSES), replace=False))
    write_pngs(x, y, train, root / "data" / "train")
    write_pngs(x, y, val, root / "data" / "val")
    write_pngs(xt, yt, test, root / "test", prefix="t")
    parity = sorted(rng.choice(np.array(test), parity_images, replace=False))
    write_pngs(xt, yt, parity, root / "parity", labelled=False, prefix="t")
    return {"data": str(root / "data"), "test": str(root / "test"), "parity": str(root / "parity"),
            "train_per_class": train_per_class, "val_per_class": val_per_class, "test_images": len(test),
            "parity_images": len(parity), "source": str(FASHION), "seed": seed}


# ---------------------------------------------------------------- running


def run(cmd: list[str], checkout: str, cwd: Path, cache: Path | None = None, check: bool = True) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    env.pop("HEADSTART_ENGINE", None)
    if cache is not None:
        env["HEADSTART_CACHE"] = str(cache)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (PYTHONPATH={checkout}) exited {p.returncode}:\n{p.stderr[-3000:]}")
    return {"wall": wall, "rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def last_json(text: str):
    """The JSON object/array printed on stdout (the last parseable one when there are several lines)."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def probabilities(predictions) -> dict[str, dict[str, float]]:
    """{file name: {class: probability}} from `headstart predict --format json` (tolerates a few shapes)."""
    if isinstance(predictions, dict):
        predictions = predictions.get("predictions", predictions.get("images", []))
    out = {}
    for item in predictions:
        name = Path(item.get("path") or item.get("file") or item.get("image")).name
        top = item.get("topk") or item.get("top") or item.get("classes") or item.get("predictions")
        if isinstance(top, dict):
            probs = {str(k): float(v) for k, v in top.items()}
        elif isinstance(top, list):
            probs = {str(t.get("class", t.get("label"))): float(t.get("probability", t.get("score", t.get("p"))))
                     for t in top}
        else:
            probs = {str(item.get("class", item.get("label"))): float(item.get("probability", item.get("score")))}
        out[name] = probs
    return out


def package_size(checkout: str) -> dict:
    files = sorted(Path(checkout, "headstart").rglob("*.py"))
    lines = sum(1 for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    return {"modules": len(files), "nonblank_lines": lines}


def one_round(name: str, checkout: str, work: Path, settings: dict, data: dict) -> dict:
    """One checkout's measurements; a section whose command fails records its error and the others still run."""
    py, hs = settings["python"], [settings["python"], "-m", "headstart"]
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    res: dict = {"loadavg_start": os.getloadavg(), "errors": {}}  # other processes skew every number here
    rundir = str(tmp / "run_warm")
    n = data["test_images"]

    def startup():
        res["help"] = run(hs + ["--help"], checkout, tmp)["wall"]
        res["import_torch"] = run([py, "-c", "import torch"], checkout, tmp)["wall"]

    def train():
        cmd = hs + ["train", data["data"], "--strategy", "linear-probe", "--model", settings["model"],
                    "--image-size", str(settings["image_size"]), "--json"]
        cache = tmp / "cache_train"
        res["train_cold"] = run(cmd + ["--out", str(tmp / "run_cold")], checkout, tmp, cache)["wall"]
        warm = run(cmd + ["--out", rundir], checkout, tmp, cache)
        res["train_warm"] = warm["wall"]
        summary = last_json(warm["stdout"])
        if isinstance(summary, dict):
            res["train_summary"] = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}

    def evaluate():
        cmd, cache = hs + ["evaluate", rundir, data["test"], "--json"], tmp / "cache_eval"
        res["evaluate_cold"] = run(cmd, checkout, tmp, cache)["wall"]
        warm = run(cmd, checkout, tmp, cache)
        res["evaluate_warm"] = warm["wall"]
        report = last_json(warm["stdout"])
        res["evaluate_accuracy"] = report.get("accuracy") if isinstance(report, dict) else None

    def predict():
        cmd, cache = hs + ["predict", rundir, data["test"], "--format", "json"], tmp / "cache_predict"
        res["predict_cold"] = run(cmd, checkout, tmp, cache)["wall"]
        res["predict_warm"] = run(cmd, checkout, tmp, cache)["wall"]

    def backbone():
        out = run([py, "-c", BACKBONE_HELPER, settings["model"], str(settings["image_size"]),
                   str(settings["batch"]), str(n)], checkout, tmp)
        res["backbone"] = json.loads(out["stdout"].strip().splitlines()[-1])
        res["backbone_img_per_s"] = ips = res["backbone"]["img_per_s"]
        for kind in ("cold", "warm"):
            if f"evaluate_{kind}" in res:
                res[f"evaluate_{kind}_share_of_backbone"] = n / res[f"evaluate_{kind}"] / ips

    def parity():
        exp = run(hs + ["export", rundir, "--json"], checkout, tmp, tmp / "cache_export")
        res["export"] = exp["wall"]
        res["export_record"] = last_json(exp["stdout"])
        cache = tmp / "cache_parity"  # fresh: the run's own model computes the features
        tail = [data["parity"], "--format", "json", "--topk", "10"]
        by_run = probabilities(last_json(run(hs + ["predict", rundir] + tail, checkout, tmp, cache)["stdout"]))
        by_onnx = probabilities(last_json(run(hs + ["predict", str(Path(rundir) / "model.onnx")] + tail,
                                              checkout, tmp, cache)["stdout"]))
        common = sorted(set(by_run) & set(by_onnx))
        res["onnx_max_abs_diff_top_score"] = max(abs(max(by_run[k].values()) - max(by_onnx[k].values()))
                                                 for k in common)
        res["onnx_max_abs_diff_probability"] = max(abs(by_run[k][c] - by_onnx[k].get(c, 0.0))
                                                   for k in common for c in by_run[k])
        res["onnx_parity"] = {"images": len(common), "classes_per_image": len(by_run[common[0]]),
                              "top1_agreement": sum(max(by_run[k], key=by_run[k].get) ==
                                                    max(by_onnx[k], key=by_onnx[k].get)
                                                    for k in common) / len(common)}
        # The run in fp32, as the exported file computes (checkouts without predict --precision: not measured).
        try:
            fp32 = probabilities(last_json(run(hs + ["predict", rundir, "--precision", "fp32"] + tail, checkout, tmp,
                                               tmp / "cache_parity_fp32")["stdout"]))
        except Exception:  # noqa: BLE001
            return
        res["onnx_max_abs_diff_probability_fp32"] = max(abs(fp32[k][c] - by_onnx[k].get(c, 0.0))
                                                        for k in common for c in fp32[k])

    for section in (startup, train, evaluate, predict, backbone, parity):
        try:
            section()
        except Exception as exc:  # noqa: BLE001 - a broken command in one checkout must not end the benchmark
            res["errors"][section.__name__] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
            print(f"  {name}: {section.__name__} failed: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
    res["loadavg_end"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    return res


TIMED = ["help", "import_torch", "train_cold", "train_warm", "evaluate_cold", "evaluate_warm", "predict_cold",
         "predict_warm", "export", "backbone_img_per_s", "evaluate_cold_share_of_backbone",
         "evaluate_warm_share_of_backbone", "onnx_max_abs_diff_top_score", "onnx_max_abs_diff_probability",
         "onnx_max_abs_diff_probability_fp32"]


def medians(rounds: list[dict]) -> dict:
    """Median over the rounds that have the item (None when none has it)."""
    out = {}
    for k in TIMED:
        values = [r[k] for r in rounds if r.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH",
                    help="a checkout of headstart (repeat; the first, or one named 'before', is the baseline)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="redesign.json")
    ap.add_argument("--python", default=str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"))
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="backbone-throughput batch (evaluate's default)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one, removed)")
    args = ap.parse_args()

    checkouts = {}
    for item in args.checkout:
        name, _, path = item.partition("=")
        checkouts[name] = str(Path(path).resolve())
    base = "before" if "before" in checkouts else next(iter(checkouts))
    work = Path(args.work or tempfile.mkdtemp(prefix="redesign-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = {"python": args.python, "model": args.model, "image_size": args.image_size, "batch": args.batch,
                "strategy": "linear-probe", "rounds": args.rounds, "cpus": len(os.sched_getaffinity(0)),
                "statistic": "median over rounds of the whole command's wall seconds (subprocess)"}
    print(f"preparing Fashion-MNIST folders in {work} ...", file=sys.stderr)
    data = make_data(work / "fmnist", train_per_class=40, val_per_class=10, test_images=1000, parity_images=256)

    result = {"settings": settings, "data": data, "checkouts": {}}
    for name, path in checkouts.items():
        which = run([args.python, "-c", "import headstart; print(headstart.__file__)"], path, work)["stdout"].strip()
        git = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "headstart"],
                               capture_output=True, text=True).stdout
        result["checkouts"][name] = {"path": path, "headstart_file": which, "git_head": git,
                                     "headstart_dirty_files": len(dirty.splitlines()),
                                     "package": package_size(path), "rounds": []}
    names = list(checkouts)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            result["checkouts"][name]["rounds"].append(one_round(name, checkouts[name], work, settings, data))
            print(f"  {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    for c in result["checkouts"].values():
        c["median"] = medians(c["rounds"])
    bm = result["checkouts"][base]["median"]
    result["ratios"] = {name: {k: (v / bm[k] if v is not None and bm[k] else None) for k, v in c["median"].items()}
                        for name, c in result["checkouts"].items() if name != base}
    bp = result["checkouts"][base]["package"]
    for name, c in result["checkouts"].items():
        if name != base:
            result["ratios"][name].update({k: c["package"][k] / bp[k] for k in ("nonblank_lines", "modules")})
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)

    # table
    others = [n for n in names if n != base]
    header = f"{'item':34s}" + "".join(f"{n:>12s}" for n in names) + "".join(f"{n + '/' + base:>16s}" for n in others)
    print(f"median of {args.rounds} round(s); {args.model} at {args.image_size} px, linear-probe; wall s unless named")
    print(header)
    print("-" * len(header))
    keys = list(result["checkouts"][base]["median"]) + ["nonblank_lines", "modules"]
    for k in keys:
        vals = [result["checkouts"][n]["median"].get(k, result["checkouts"][n]["package"].get(k)) for n in names]
        cells = "".join(f"{v:12.3g}" if isinstance(v, float) else f"{str(v):>12s}" for v in vals)
        ratios = "".join(f"{result['ratios'][n].get(k) or float('nan'):16.3f}" for n in others)
        print(f"{k:34s}{cells}{ratios}")
    for n in names:
        c = result["checkouts"][n]
        last = c["rounds"][-1]
        print(f"{n}: {c['headstart_file']} (HEAD {c['git_head'][:7]}, {c['headstart_dirty_files']} changed files "
              f"under headstart/); accuracy {last.get('evaluate_accuracy')}; backbone "
              f"{last.get('backbone', {}).get('precision')}; onnx top-1 agreement "
              f"{last.get('onnx_parity', {}).get('top1_agreement')}")
        for r, rnd in enumerate(c["rounds"]):
            for section, error in rnd["errors"].items():
                print(f"  round {r + 1} {section} FAILED: {error.splitlines()[0][:200]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
