"""Linear probe on cached features against the PyTorch-tutorial way (and fastai), on the same images and epochs.

Data: Fashion-MNIST as PNG files, 2,000 training images (200 per class), 200 validation images, 2,000 test images
from the official test set; EfficientNet-Lite0 (ImageNet weights, offline), frozen.

  * ``tutorial``: PyTorch's "ConvNet as fixed feature extractor" recipe: a new ``nn.Linear`` head trained by SGD
    (momentum 0.9, StepLR every 7 epochs) with the light augmentation (random resized crop, flip); every training
    and validation image goes through the frozen backbone at every epoch; the epoch with the best validation
    accuracy is kept. Same runtime as headstart (bf16 autocast, channels-last, same loader), so only the method
    differs. (The tutorial itself leaves BatchNorm in training mode; here the backbone is in eval mode.)
  * ``headstart``: :func:`headstart.training.probe.fit_linear_probe`, exactly as ``headstart train --strategy
    linear-probe`` calls it: features of the training and validation images computed once into an empty cache,
    then the head fitted on them (``logreg``; ``ncm`` and ``sgd`` with the same number of epochs are fitted on the
    same cached features and reported too).
  * ``headstart (warm)``: the same call again: every feature comes from the cache.
  * ``fastai`` (with ``--fastai-python``): ``benchmarks/fastai_baseline.py`` run by that interpreter on the same
    folder: ``vision_learner`` with the same backbone and weights, frozen, ``fit_one_cycle(epochs)``.

Wall time is the training (everything until the head is fitted); test accuracy is on the 2,000 test images.

Example (about 8 minutes on 2 CPU cores; most of it is the tutorial's 20 passes over the images):

    python benchmarks/linear_probe_speed.py --image-size 64 --epochs 20 --out /tmp/lp-bench
    # with fastai in its own venv (never a dependency of headstart; see benchmarks/fastai_baseline.py):
    python benchmarks/linear_probe_speed.py --image-size 64 --epochs 20 --out /tmp/lp-bench \\
        --fastai-python /tmp/fastai-venv/bin/python
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headstart.core.runtime import make_runtime, seed_everything
from headstart.data.dataset import ImageFiles, make_loader
from headstart.data.sources import discover
from headstart.data.transforms import eval_transform, train_transform
from headstart.features import extract_features
from headstart.training.heads import fit_head
from headstart.training.loop import predict_logits
from headstart.training.probe import fit_linear_probe
from headstart.zoo.model import build_model


def make_data(out: Path) -> Path:
    from headstart.data.fashion_mnist import make_image_folder

    if not (out / "train").is_dir():
        make_image_folder(out, train_per_class=200, val_per_class=20, test_images=2000, seed=0)
    return out


def tutorial(splits, pre, runtime, epochs: int, batch_size: int, lr: float) -> tuple[float, float, float]:
    """(train seconds, best val acc, test acc): the head trained through the frozen backbone at every epoch."""
    seed_everything(0)
    model = build_model("efficientnet_lite0", len(splits.classes))
    runtime.prepare(model)
    model.set_trainable(-1)  # head only
    train = make_loader(ImageFiles(splits.train, train_transform(pre, "light")), batch_size, shuffle=True)
    val = make_loader(ImageFiles(splits.val, eval_transform(pre)), batch_size * 2, shuffle=False)
    opt = torch.optim.SGD(model.head.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    best_acc, best_head = -1.0, None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.eval()  # frozen BatchNorm statistics; only the head's parameters require gradients
        for images, labels in train:
            with runtime.autocast():
                logits = model(runtime.to_input(images))
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        logits, labels = predict_logits(model, val, runtime)
        acc = (logits.argmax(1) == labels).float().mean().item()
        if acc > best_acc:
            best_acc, best_head = acc, copy.deepcopy(model.head.state_dict())
        print(f"    tutorial epoch {epoch + 1}/{epochs}: val acc {acc:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    seconds = time.perf_counter() - t0
    model.head.load_state_dict(best_head)
    test = make_loader(ImageFiles(splits.test, eval_transform(pre)), batch_size * 2, shuffle=False)
    logits, labels = predict_logits(model, test, runtime, desc="test")
    return seconds, best_acc, (logits.argmax(1) == labels).float().mean().item()


def headstart_probe(splits, pre, runtime, batch_size: int, cache: Path, epochs: int) -> dict:
    """fit_linear_probe as ``headstart train`` calls it, cold then warm; test accuracy from cached test features."""
    model = build_model("efficientnet_lite0", len(splits.classes))
    runtime.prepare(model)
    model.set_trainable(-1)
    loaders = {s: make_loader(ImageFiles(getattr(splits, s), eval_transform(pre)), batch_size * 2, shuffle=False)
               for s in ("train", "val")}
    out = {}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        info = fit_linear_probe(model, loaders["train"], loaders["val"], runtime, head="logreg",
                                preprocessing=pre, cache_dir=cache)
        out[name] = {"seconds": time.perf_counter() - t0, **info}
    test = extract_features(model, [p for p, _ in splits.test], pre, runtime, batch_size=batch_size * 2,
                            cache_dir=cache, desc="test")
    y_test = np.array([splits.test[i][1] for i in test.positions])
    with torch.no_grad():
        logits = model.head(torch.from_numpy(test.array())).numpy()
    out["test_acc"] = {"logreg": float((logits.argmax(1) == y_test).mean())}
    # The other heads, fitted on the same cached features (the sgd head for the same number of epochs).
    feats = {s: extract_features(model, [p for p, _ in getattr(splits, s)], pre, runtime, cache_dir=cache,
                                 verbose=False) for s in ("train", "val")}
    xy = {s: (f.array(), np.array([getattr(splits, s)[i][1] for i in f.positions])) for s, f in feats.items()}
    for kind, options in (("ncm", {}), ("sgd", {"epochs": epochs})):
        t0 = time.perf_counter()
        head = fit_head(kind, *xy["train"], *xy["val"], len(splits.classes), **options)
        out[f"{kind}_head_seconds"] = time.perf_counter() - t0
        out["test_acc"][kind] = float((head.logits(test.array()).argmax(1) == y_test).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/lp-bench", help="folder for the images and the feature cache")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01, help="tutorial SGD learning rate (its 0.001 was for batch 4)")
    ap.add_argument("--fastai-python", default=None, help="python of a venv with fastai, to add its figures")
    ap.add_argument("--skip-tutorial", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    data = make_data(out / "fashion-mnist")
    cache = out / f"cache-{time.time_ns()}"  # empty: the first run is cold
    splits = discover(data)
    runtime = make_runtime("auto", "auto")
    pre = build_model("efficientnet_lite0", 2).spec.preprocessing(args.image_size)
    print(f"EfficientNet-Lite0 at {args.image_size} px, {runtime.describe()}, {torch.get_num_threads()} threads; "
          f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images; "
          f"{args.epochs} epochs", flush=True)

    hs = headstart_probe(splits, pre, runtime, args.batch_size, cache, args.epochs)
    print(f"  headstart cold {hs['cold']['seconds']:.1f} s, warm {hs['warm']['seconds']:.2f} s", flush=True)
    rows = [("headstart (logreg, cold cache)", hs["cold"]["seconds"], hs["cold"]["probe_val_acc"],
             hs["test_acc"]["logreg"]),
            ("headstart (logreg, warm cache)", hs["warm"]["seconds"], hs["warm"]["probe_val_acc"],
             hs["test_acc"]["logreg"]),
            ("  + ncm head on the same features", hs["ncm_head_seconds"], None, hs["test_acc"]["ncm"]),
            (f"  + sgd head, {args.epochs} epochs on features", hs["sgd_head_seconds"], None, hs["test_acc"]["sgd"])]
    if not args.skip_tutorial:
        secs, val_acc, test_acc = tutorial(splits, pre, runtime, args.epochs, args.batch_size, args.lr)
        rows.append((f"tutorial ({args.epochs} epochs through the backbone)", secs, val_acc, test_acc))
    if args.fastai_python:
        script = Path(__file__).with_name("fastai_baseline.py")
        res = subprocess.run([args.fastai_python, str(script), "--data", str(data), "--image-size",
                              str(args.image_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)],
                             check=False, capture_output=True, text=True)
        last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        if res.returncode == 0 and last.startswith("{"):
            r = json.loads(last)
            rows.append((f"fastai {r['fastai']} ({args.epochs} epochs, fit_one_cycle)", r["seconds"], r["val_acc"],
                         r["test_acc"]))
        else:
            print(f"fastai run failed:\n{res.stderr[-2000:]}")

    print(f"\n{'method':52s} {'train time':>11s} {'val acc':>8s} {'test acc':>9s}")
    for name, secs, val, test in rows:
        print(f"{name:52s} {secs:10.2f}s {'' if val is None else f'{val:8.3f}':>8s} {test:9.3f}")
    cold = hs["cold"]["seconds"]
    for name, secs, _, test in rows[4:]:
        print(f"speed-up of headstart (cold) over {name.split(' (')[0]}: {secs / cold:.1f}x "
              f"(test acc {hs['test_acc']['logreg']:.3f} vs {test:.3f}); target >= 20x at equal or better accuracy")
    fc, fw = hs["cold"]["feature_seconds"], hs["warm"]["feature_seconds"]
    print(f"features, warm / cold cache: {fw:.2f} s / {fc:.2f} s = {fw / fc:.3f} (target <= 0.05)")
    print(f"whole probe, warm / cold: {hs['warm']['seconds']:.2f} s / {cold:.2f} s = {hs['warm']['seconds'] / cold:.3f}"
          f" (the warm run is {hs['warm']['head_seconds']:.2f} s of fitting the head)")


if __name__ == "__main__":
    main()
