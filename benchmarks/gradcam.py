"""Grad-CAM: does the heat map's peak fall on the object, and what does a heat map cost?

Localisation: Fashion-MNIST items (28 px) scaled to a random 64-80 px square and pasted at a random place on a
224 px black canvas, kept inside the part the eval centre crop keeps. A model is trained on such canvases with
``headstart train`` (EfficientNet-Lite0 at 224 px, its default size; ``--strategies`` linear-probe and/or
fine-tune), then for every correctly classified held-out canvas: is the peak of the Grad-CAM for the predicted class
inside the pasted square? Goal (issue 25): at least 90% of the test canvases. Each layer in ``--layers`` is measured;
a layer is chosen on the validation canvases only, and all are reported on test (this choice made ``blocks.5`` the
Lites' declared ``cam_layer``). The chance level is the square's share of the visible canvas (about 13%).

Time: Grad-CAM per image (forward and backward in fp32 on the CPU, Lite0 at 224 px) at batch 1 and 16, against
the plain forward of the same images; on a shared machine, the wall times move with the other jobs.

    python benchmarks/gradcam.py --out /tmp/gradcam          # about 10 minutes on 2 shared cores (linear probe)
    python benchmarks/gradcam.py --out /tmp/gradcam --strategies linear-probe,fine-tune
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.data import fashion_mnist
from headstart.data.transforms import eval_transform
from headstart.explain import grad_cam, peak
from headstart.predict.run import load_run
from headstart.report import write_report

CANVAS, SIZES = 224, (64, 80)


def paste(item: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The item scaled to a random square size, on a black canvas at a random place at least ``margin`` from its
    edges; and its box (left, top, right, bottom) in canvas pixels."""
    side = int(rng.integers(SIZES[0], SIZES[1] + 1))
    left, top = (int(rng.integers(margin, CANVAS - margin - side + 1)) for _ in range(2))
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), (left, top))
    return canvas.convert("RGB"), (left, top, left + side, top + side)


def make_data(folder: Path, per_class: dict[str, int], seed: int) -> dict[str, tuple[int, int, int, int]]:
    """train/, val/ and test/ of class folders of pasted canvases (train and val from the official training set,
    test from the test set); returns each file's box."""
    rng = np.random.default_rng(seed)
    # The eval transform resizes to 256 and crops the centre 224: keep the square inside what the crop keeps.
    margin = int(np.ceil(CANVAS * (1 - 0.875) / 2))
    boxes, used = {}, None
    for split, n in per_class.items():
        x, y = fashion_mnist.load("test" if split == "test" else "train")
        idx = fashion_mnist.balanced_indices(y, n, rng, exclude=used if split != "test" else None)
        used = idx if split == "train" else used
        for i in idx:
            image, box = paste(x[i], rng, margin)
            path = folder / split / fashion_mnist.CLASSES[y[i]] / f"{split[:2]}{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            boxes[str(path)] = box
    return boxes


def train(data: Path, run: Path, strategy: str, seed: int, epochs: int) -> float | None:
    """``headstart train`` on the canvases; its wall time, or None when ``run`` holds a finished run already."""
    if (run / "summary.json").is_file():
        return None
    cmd = [sys.executable, "-m", "headstart", "train", str(data), "--strategy", strategy, "--image-size", str(CANVAS),
           "--seed", str(seed), "--out", str(run), "--overwrite", "--no-report"]
    cmd += ["--epochs", str(epochs)] if strategy != "linear-probe" else []
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HEADSTART_CACHE": str(run.with_name(run.name + ".cache"))})
    return time.perf_counter() - start


def crop_box(box, pre) -> tuple[float, float, float, float]:
    """A canvas box in the coordinates of the eval crop the network sees."""
    resize = round(pre.image_size / pre.crop_pct)
    scale, offset = resize / CANVAS, (resize - pre.image_size) / 2
    return tuple(v * scale - offset for v in box)


def localisation(loaded, paths: list[str], labels: list[int], boxes: dict, layers: list[str]) -> dict:
    """Accuracy, and for each layer the share of correctly classified images whose heat-map peak is in the box."""
    transform = eval_transform(loaded.preprocessing)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        predicted = torch.cat([loaded.model(x[i:i + 64].float()).argmax(1) for i in range(0, len(x), 64)]).numpy()
    right = np.flatnonzero(predicted == np.array(labels))
    out = {"images": len(paths), "accuracy": round(float(len(right) / len(paths)), 4), "correct": int(len(right)),
           "layers": {}}
    for layer in layers:
        maps = grad_cam(loaded.model, x[right], [int(predicted[i]) for i in right], layer=layer)
        hits, flat = 0, 0
        for i, heatmap in zip(right, maps):
            left, top, r, b = crop_box(boxes[paths[i]], loaded.preprocessing)
            row, col = peak(heatmap)
            hits += left <= col < r and top <= row < b
            flat += heatmap.max() == 0
        out["layers"][layer] = {"peak_in_box": round(hits / max(1, len(right)), 4), "hits": int(hits),
                                "empty_maps": int(flat), "map_side": _map_side(loaded.model, layer, x[:1])}
    return out


def _map_side(model, layer: str, x: torch.Tensor) -> int:
    seen = {}

    def keep(_module, _inputs, output) -> None:  # a hook that returned a value would replace the output
        seen["s"] = output.shape

    handle = model.backbone.get_submodule(layer).register_forward_hook(keep)
    with torch.no_grad():
        model(x.float())
    handle.remove()
    return int(seen["s"][-1])


def timing(loaded, paths: list[str], repeats: int = 2) -> dict:
    """Seconds per image: the plain forward, and Grad-CAM at batch 1 and 16 (best of ``repeats``)."""
    transform = eval_transform(loaded.preprocessing)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    grad_cam(loaded.model, x[:2], [0, 0])  # warm-up

    def best(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return round(min(times) / len(x), 4)

    with torch.no_grad():
        forward = best(lambda: loaded.model(x.float()))
    return {"images": len(x), "threads": torch.get_num_threads(), "forward_fp32_s_per_image": forward,
            "gradcam_batch1_s_per_image": best(lambda: grad_cam(loaded.model, x, [0] * len(x), batch_size=1)),
            "gradcam_batch16_s_per_image": best(lambda: grad_cam(loaded.model, x, [0] * len(x), batch_size=16)),
            **report_seconds(loaded)}


def report_seconds(loaded) -> dict:
    """``write_report`` of the run (24 top losses, the run already loaded) with and without their heat maps."""
    out = {}
    for heatmaps in (False, True, False):  # the first call pays the predictions' warm-up; the last one counts
        start = time.perf_counter()
        write_report(loaded.path, loaded.path.parent / "report-timing.html", loaded=loaded, heatmaps=heatmaps)
        out[f"report_{'with' if heatmaps else 'without'}_heatmaps_s"] = round(time.perf_counter() - start, 2)
    return out


def split_files(data: Path, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """The split's files and their labels as indices into the run's ``classes``."""
    paths = sorted(str(p) for p in (data / split).rglob("*.png"))
    return paths, [classes.index(Path(p).parent.name) for p in paths]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/gradcam"))
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--strategies", default="linear-probe")
    p.add_argument("--epochs", type=int, default=3, help="for strategies other than linear-probe")
    p.add_argument("--layers", default="blocks.5,bn2,blocks.4,blocks.2",
                   help="backbone modules (the declared cam_layer, blocks.5, first); blocks.5, blocks.6, conv_head "
                        "and bn2 are 7x7 at 224 px, blocks.4 14x14, blocks.2 28x28")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="localisation,timing",
                   help="what to measure; each part replaces its own entries in an existing --json")
    p.add_argument("--json", type=Path, default=Path("docs/measurements/gradcam.json"))
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    data = args.out / "canvases"
    boxes_file = args.out / "boxes.json"
    if not boxes_file.exists():
        per_class = {"train": args.train_per_class, "val": args.val_per_class, "test": args.test_per_class}
        boxes_file.parent.mkdir(parents=True, exist_ok=True)
        boxes_file.write_text(json.dumps(make_data(data, per_class, args.seed)))
    boxes = json.loads(boxes_file.read_text())
    layers = args.layers.split(",")
    result = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": {}}
    result.update(setup={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  machine="2 CPU cores shared with other jobs: wall times are indicative")
    for strategy in args.strategies.split(","):
        run = args.out / f"run-{strategy}"
        wall = train(data, run, strategy, args.seed, args.epochs)
        loaded = load_run(run, device="cpu", precision="fp32")
        if "timing" in parts:
            result["timing"] = timing(loaded, split_files(data, "test", loaded.classes)[0][:32])
            print(json.dumps(result["timing"]), flush=True)
            parts.remove("timing")  # once, on the first run
        if "localisation" not in parts:
            continue
        entry = result["runs"].setdefault(strategy, {})
        for split in ("val", "test"):  # layers measured before on the same run are kept
            got = localisation(loaded, *split_files(data, split, loaded.classes), boxes, layers)
            got["layers"] = {**entry.get(split, {}).get("layers", {}), **got["layers"]}
            entry[split] = got
        entry["train_wall_s"] = wall and round(wall, 1) or entry.get("train_wall_s")
        on_val = entry["val"]["layers"]
        entry["layer_chosen_on_val"] = max(on_val, key=lambda k: on_val[k]["peak_in_box"])
        entry["declared_layer"] = loaded.model.spec.cam_layer
        print(json.dumps(entry, indent=1), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
