"""Every command at 10,000 images and at the largest size that fits: wall time and peak RSS per stage.

    python benchmarks/scale.py make --root /tmp/headstart-scale --photos 100000      # the folders (under /tmp)
    python benchmarks/scale.py run --root /tmp/headstart-scale --data fmnist-10000 fmnist-70000 photos-10000 ...
    python benchmarks/scale.py ddp --root /tmp/headstart-scale --data photos-10000   # 1 process vs 2 Gloo
    python benchmarks/scale.py extraction --code BEFORE AFTER   # each checkout's extraction against its backbone
    python benchmarks/scale.py cold-train --code BEFORE AFTER   # the linear-probe train of a test folder, cold cache

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
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
# HEADSTART_CODE: another checkout's headstart to measure (extraction's before/after rounds run the old code so)
sys.path.insert(0, os.environ.get("HEADSTART_CODE", str(ROOT)))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it, before torch is imported
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
    """Runs ``cmd`` under GNU time: wall seconds, CPU seconds (user + system) and peak RSS (MB). Not ``wait4`` from
    here: on Linux a child starts with its parent's high-water mark, and this process has loaded torch to measure
    the backbone."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(["/usr/bin/time", "-f", "%U %S %M", "-o", str(log) + ".rss", *cmd], env=env, stdout=f,
                               stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    user, system, rss_kb = Path(str(log) + ".rss").read_text().split()[-3:]
    return {"seconds": round(seconds, 1), "cpu_seconds": round(float(user) + float(system), 1),
            "peak_rss_mb": round(int(rss_kb) / 1024), "exit": code, "cmd": " ".join(cmd[2:])}


def feature_rate(log: Path) -> float | None:
    """The extraction's img/s as the cold train says it (``features (train): computed 8000 images in 40 s (200.0
    img/s)``)."""
    rates = re.findall(r"features \(train\): computed \d+ images in \d+ s \(([\d.]+) img/s", log.read_text())
    return float(rates[-1]) if rates else None


def stages(data: Path, work: Path, image_size: int) -> list[tuple[str, list[str], str]]:
    """(stage, headstart arguments, feature cache) for one dataset: cold train on an empty cache, the rest warm."""
    run, common = work / "run", ["--image-size", str(image_size)]
    return [("check", ["check", str(data / "train"), "--json"], "warm"),
            ("train_cold", ["train", str(data / "train"), "--out", str(work / "run-cold"), "--strategy",
                            "linear-probe", *common], "cold"),
            ("train_warm", ["train", str(data / "train"), "--out", str(run), "--strategy", "linear-probe", *common],
             "warm"),
            ("evaluate", ["evaluate", str(run), str(data / "test"), "--json"], "warm"),
            ("predict", ["predict", str(run), str(data / "test"), "--format", "csv"], "warm")]


def run_dataset(root: Path, name: str, image_size: int) -> dict:
    data, work = root / name, root / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = {"images": sum(1 for _ in data.rglob("*.*g")), "image_size": image_size, "stages": {}}
    for stage, args, cache in stages(data, work, image_size):
        env = {**os.environ, "HEADSTART_CACHE": str(work / f"cache-{cache}"), "HEADSTART_PROGRESS_SECONDS": "60",
               "PYTHONPATH": str(ROOT)}
        if stage == "train_cold":
            env["HEADSTART_CACHE"] = str(work / "cache-cold")
        log = work / f"{stage}.log"
        out["stages"][stage] = timed([sys.executable, "-m", "headstart", *args], env, log)
        if stage == "train_cold":
            out["stages"][stage]["extraction_img_per_s"] = feature_rate(log)
        print(name, stage, out["stages"][stage], flush=True)
        if stage == "train_cold":  # the warm stages share the cache the cold train filled
            shutil.copytree(work / "cache-cold", work / "cache-warm", dirs_exist_ok=True)
    return out


def ddp(root: Path, name: str, image_size: int) -> dict:
    """A cold linear-probe train of ``name``'s test folder on one process (two threads) and on two Gloo processes
    (one thread each): wall time, the extraction's time, and whether the two caches hold the same rows."""
    from headstart.features.cache import FeatureCache, namespaces

    data, work = root / name / "test", root / "work" / f"ddp-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out, rows = {"images": sum(1 for _ in data.rglob("*.*g")), "image_size": image_size}, []
    for world in (1, 2):
        env = {**os.environ, "HEADSTART_CACHE": str(work / f"cache{world}"), "PYTHONPATH": str(ROOT)}
        launch = ["-m", "torch.distributed.run", f"--nproc-per-node={world}", "--master-port=29561"] if world > 1 \
            else []
        args = ["-m", "headstart", "train", str(data), "--out", str(work / f"run{world}"), "--strategy",
                "linear-probe", "--image-size", str(image_size)]
        log = work / f"train{world}.log"
        out[f"processes_{world}"] = timed([sys.executable, *launch, *args], env, log)
        out[f"processes_{world}"]["extraction_img_per_s"] = feature_rate(log)
        (ns,) = namespaces(work / f"cache{world}")
        cache = FeatureCache(json.loads(Path(ns["dir"], "key.json").read_text()), work / f"cache{world}")
        rows.append(dict(zip(cache.keys(), cache.read(cache.keys()))))
        print(name, world, out[f"processes_{world}"], flush=True)
    same_keys = sorted(rows[0]) == sorted(rows[1])
    out["same_rows"] = same_keys
    if same_keys:
        diff = max(float(np.abs(rows[0][k] - rows[1][k]).max()) for k in rows[0])
        out["max_abs_feature_difference"] = diff
    out["time_ratio_two_over_one"] = round(out["processes_2"]["seconds"] / out["processes_1"]["seconds"], 3)
    return out


def _backbone_rate(runtime, size: int, lanes: int, seconds: float = 3.0) -> float:
    """EfficientNet-Lite0's own img/s on random images: ``lanes`` 1 is the checkout's own :func:`throughput` (one
    forward on all intra-op threads; batches of 32 before this change, of 16 after); more is batches of 16 in that
    many threads of one intra-op thread each, the same in every checkout (the fastest arrangement found here)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from headstart.features.speed import throughput
    from headstart.zoo.model import build_model

    if lanes == 1:
        return throughput("efficientnet_lite0", size, runtime, root=Path("/tmp/headstart-speed-scratch"),
                          seconds=seconds, remeasure=True)
    from headstart.features.forward import fast_forward

    model = runtime.prepare(build_model("efficientnet_lite0", 2, pretrained=False).eval())
    x = runtime.to_input(torch.randn(16, 3, size, size))
    forward = fast_forward(model.backbone, runtime, x[:1], images=16, engine="torch")

    def run(_) -> int:
        with torch.inference_mode(), runtime.autocast():
            forward(x)
        return len(x)

    threads = torch.get_num_threads()
    with ThreadPoolExecutor(lanes, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        list(pool.map(run, range(lanes)))  # warm-up
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            done += sum(pool.map(run, range(lanes)))
    torch.set_num_threads(threads)
    return done / (time.perf_counter() - start)


def extraction_round(root: Path, name: str, image_size: int) -> dict:
    """One round, in this process: the backbone's own throughput (features/speed.py), a cold extraction of
    ``name``'s test folder (hash, decode, resize, batch, forward, cache writes; an empty cache), the backbone
    again, the backbone in lanes before and after; wall and CPU time, and the load averages around it."""
    import tempfile

    from headstart.core.runtime import make_runtime
    from headstart.data.sources import read_class_folders
    from headstart.features import extract_features
    from headstart.zoo.model import build_model

    runtime = make_runtime("auto", "auto")
    model = runtime.prepare(build_model("efficientnet_lite0", 10))
    pre = replace(model.spec.preprocessing(), image_size=image_size)
    paths = [p for p, _ in read_class_folders(root / name / "test")[1]]
    load_before = os.getloadavg()
    backbone, lanes = [_backbone_rate(runtime, image_size, 1)], [_backbone_rate(runtime, image_size, 2)]
    with tempfile.TemporaryDirectory() as cache:
        wall, cpu = time.perf_counter(), time.process_time()
        got = extract_features(model, paths, pre, runtime, batch_size=64, cache_dir=cache, verbose=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    backbone.append(_backbone_rate(runtime, image_size, 1))
    lanes.append(_backbone_rate(runtime, image_size, 2))
    rate = got.computed / wall
    return {"images": got.computed, "extraction_img_per_s": round(rate, 1),
            "extraction_cpu_ms_per_img": round(cpu / got.computed * 1e3, 2),
            "backbone_img_per_s": [round(b, 1) for b in backbone], "ratio": round(rate / (sum(backbone) / 2), 3),
            "backbone_lanes_b16_img_per_s": [round(b, 1) for b in lanes],
            "ratio_to_lanes_b16": round(rate / (sum(lanes) / 2), 3),
            "load_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())]}


def extraction(root: Path, names: list[str], sizes: list[int], codes: list[Path], rounds: int) -> dict:
    """Rounds of :func:`extraction_round`, each in a fresh process, for every folder, size and checkout of
    headstart in ``codes`` (before and after a change), the checkouts' order alternating from round to round, so
    that the machine's load (shared) weighs on all alike. Ratios are each round's own (extraction over the mean of
    the backbone figures around it)."""
    out: dict = {}
    for r in range(rounds):
        for size in sizes:
            for name in names:
                for code in (codes if r % 2 == 0 else codes[::-1]):
                    env = {**os.environ, "HEADSTART_CODE": str(code)}
                    cmd = [sys.executable, __file__, "extraction-round", "--root", str(root), "--data", name,
                           "--image-size", str(size)]
                    got = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                                    text=True).stdout.strip().splitlines()[-1])
                    out.setdefault(f"{name} {size}px", {}).setdefault(str(code), []).append(got)
                    print(r, name, size, code, got, flush=True)
    return out


def cold_train(root: Path, name: str, image_size: int, codes: list[Path], rounds: int) -> dict:
    """What a user waits for: ``headstart train <name>/test --strategy linear-probe`` with an empty feature cache,
    each checkout in ``codes`` in turn (the order alternating by round): wall seconds, peak RSS, the extraction's
    own rate from its log line, and the load averages before and after."""
    data, work = root / name / "test", root / "work" / f"cold-train-{name}"
    out: dict = {}
    for r in range(rounds):
        for code in (codes if r % 2 == 0 else codes[::-1]):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            env = {**os.environ, "HEADSTART_CACHE": str(work / "cache"), "PYTHONPATH": str(code)}
            args = ["train", str(data), "--out", str(work / "run"), "--strategy", "linear-probe", "--image-size",
                    str(image_size)]
            load = os.getloadavg()
            got = timed([sys.executable, "-m", "headstart", *args], env, work / "train.log")
            got.update(extraction_img_per_s=feature_rate(work / "train.log"),
                       load_before_after=[round(x, 2) for x in (*load, *os.getloadavg())])
            out.setdefault(str(code), []).append(got)
            print(r, name, code, got, flush=True)
    return out


def table(results: dict) -> str:
    """The per-stage table of docs/measurements/README.md, from the JSON."""
    names = list(results.get("datasets", {}))
    lines = ["| stage | " + " | ".join(f"{n}: s | MB" for n in names) + " |",
             "|---|" + "---:|---:|" * len(names)]
    for stage in ("check", "train_cold", "train_warm", "evaluate", "predict"):
        cells = []
        for n in names:
            got = results["datasets"][n]["stages"].get(stage, {})
            cells += [str(got.get("seconds", "")), str(got.get("peak_rss_mb", ""))]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("make", "run", "ddp", "extraction", "extraction-round", "cold-train",
                                         "table"))
    ap.add_argument("--root", type=Path, default=Path("/tmp/headstart-scale"))
    ap.add_argument("--data", nargs="+", default=["fmnist-10000", "photos-10000"])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "measurements" / "scale.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="extraction: image sizes")
    ap.add_argument("--code", type=Path, nargs="+", default=[ROOT],
                    help="extraction, cold-train: headstart checkouts to compare")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--key", default="extraction_vs_backbone_after",
                    help="extraction, cold-train: where in --out the figures go")
    args = ap.parse_args()
    if args.what == "make":
        for name in args.data:
            kind, n = name.rsplit("-", 1)
            if not (args.root / name / "done").exists():
                (make_fmnist if kind == "fmnist" else make_photos)(args.root / name, int(n))
                (args.root / name / "done").write_text("")
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {"datasets": {}}
    results["machine"] = "2 shared CPU cores (AMD EPYC, AVX-512 BF16), other engineers' jobs running"
    if args.what == "table":
        print(table(results))
        return
    if args.what == "extraction-round":
        print(json.dumps(extraction_round(args.root, args.data[0], args.image_size)))
        return
    if args.what == "cold-train":
        results[args.key] = {f"{n} {args.image_size}px": cold_train(args.root, n, args.image_size, args.code,
                                                                    args.rounds) for n in args.data}
        args.out.write_text(json.dumps(results, indent=1))
        return
    if args.what == "extraction":
        results[args.key] = extraction(args.root, args.data, args.sizes, args.code, args.rounds)
        args.out.write_text(json.dumps(results, indent=1))
        return
    if args.what == "ddp":
        results["ddp"] = {name: ddp(args.root, name, args.image_size) for name in args.data}
        args.out.write_text(json.dumps(results, indent=1))
        print(json.dumps(results["ddp"], indent=1))
        return
    for name in args.data:
        results["datasets"][name] = run_dataset(args.root, name, args.image_size)
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
