"""ONNX Runtime against PyTorch eager on the CPU, for the model ``headstart export`` writes: EfficientNet-Lite0 at
224 px with a 10-class head fitted here on Fashion-MNIST (logistic regression on 200 images' features).

Side by side in one run (in blocks, in two passes of opposite order):

  * ``torch eager``: fp32, channels-last, as headstart's CPU runtime runs it (``make_runtime("cpu", "fp32")``), and
    the same model in the default (contiguous) layout: on an AVX2 CPU without AVX-512, channels-last is several
    times slower at batch 1;
  * ``onnxruntime``: the same model exported as ``headstart export`` does (dynamo exporter, calibrated softmax in
    the graph), ONNX Runtime's CPU provider with its default threads;
  * ``onnxruntime int8``: that file after ONNX Runtime's dynamic quantization (``--quantize int8``).

Figures: batch-1 latency (median and p95 over ``--rounds`` calls), batch-32 throughput (over the agreement pass,
once per runtime),
and on ``--images`` Fashion-MNIST test images the top-1 agreement with eager and the largest probability difference.

Example (about 3 minutes on 2 CPU cores; Fashion-MNIST from the Debian package dataset-fashion-mnist):

    python benchmarks/export_speed.py
    python benchmarks/export_speed.py --no-int8 --images 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headstart.core.preprocessing import Preprocessing
from headstart.core.runtime import make_runtime
from headstart.data import fashion_mnist
from headstart.data.transforms import eval_transform
from headstart.export.exporter import CalibratedModel, _quantize_int8, _save_onnx
from headstart.predict.metadata import ExportMetadata
from headstart.predict.onnx import OnnxModel
from headstart.zoo.model import build_model


def fashion_images(split: str, per_class: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    x, y = fashion_mnist.load(split)
    idx = fashion_mnist.balanced_indices(y, per_class, np.random.default_rng(seed))
    return [Image.fromarray(x[i]).convert("RGB") for i in idx], y[idx]


@torch.no_grad()
def fitted_model(pre: Preprocessing, runtime, per_class: int):
    """Lite0 with a logistic-regression head on ``per_class`` training images of each class (features fp32)."""
    from sklearn.linear_model import LogisticRegression

    model = build_model("efficientnet_lite0", len(fashion_mnist.CLASSES), pretrained=True).eval()
    images, labels = fashion_images("train", per_class, seed=0)
    x = torch.stack([eval_transform(pre)(im) for im in images])
    runtime.prepare(model)
    feats = torch.cat([model.forward_features(runtime.to_input(x[i:i + 32])) for i in range(0, len(x), 32)])
    clf = LogisticRegression(max_iter=1000).fit(feats.numpy(), labels)
    model.head.weight.copy_(torch.as_tensor(clf.coef_, dtype=torch.float32))
    model.head.bias.copy_(torch.as_tensor(clf.intercept_, dtype=torch.float32))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="Fashion-MNIST test images for agreement and batch 32")
    parser.add_argument("--rounds", type=int, default=15, help="batch-1 calls per runtime")
    parser.add_argument("--train-per-class", type=int, default=20, help="images per class to fit the head on")
    parser.add_argument("--no-int8", action="store_true", help="leave out dynamic int8 quantization")
    args = parser.parse_args()

    started = time.perf_counter()
    pre = Preprocessing(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
    runtime = make_runtime("cpu", "fp32")
    model = fitted_model(pre, runtime, args.train_per_class)
    fit_s = time.perf_counter() - started

    tmp = Path(tempfile.mkdtemp(prefix="export-speed-"))
    meta = ExportMetadata(list(fashion_mnist.CLASSES), pre, "efficientnet_lite0", "bench")
    t = time.perf_counter()
    exportable = CalibratedModel(copy.deepcopy(model).to(memory_format=torch.contiguous_format)).eval()
    _save_onnx(exportable, torch.zeros(2, 3, 224, 224), tmp / "model.onnx", meta)
    export_s = time.perf_counter() - t
    ort_fp32 = OnnxModel(tmp / "model.onnx")

    @torch.no_grad()
    def eager(batch: np.ndarray) -> np.ndarray:
        return model(runtime.to_input(torch.from_numpy(batch))).softmax(-1).numpy()

    contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)

    @torch.no_grad()
    def eager_contiguous(batch: np.ndarray) -> np.ndarray:
        return contiguous(torch.from_numpy(batch)).softmax(-1).numpy()

    runners = {"torch eager (fp32, channels-last)": eager, "torch eager (fp32, contiguous)": eager_contiguous,
               "onnxruntime fp32": ort_fp32.probabilities}
    if not args.no_int8:
        _quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
        runners["onnxruntime int8 (dynamic)"] = OnnxModel(tmp / "model.int8.onnx").probabilities

    images, labels = fashion_images("test", max(1, args.images // len(fashion_mnist.CLASSES)), seed=1)
    x = torch.stack([eval_transform(pre)(im) for im in images]).numpy()
    for run in runners.values():  # warm-up: first calls allocate and pick kernels
        run(x[:1])
        run(x[:32])

    # In blocks, not call by call: ONNX Runtime's and torch's thread pools spin for a while after each call, and
    # interleaving single calls would charge one runtime's spinning to the other. Two passes in opposite orders
    # spread the machine's other load over all of them.
    latency = {name: [] for name in runners}
    batch_s = {name: 0.0 for name in runners}
    probs = {}
    for order in (list(runners), list(runners)[::-1]):
        for name in order:
            run = runners[name]
            time.sleep(0.5)
            for _ in range(max(1, args.rounds // 2)):
                t = time.perf_counter()
                run(x[:1])
                latency[name].append((time.perf_counter() - t) * 1000)
            if name in probs:
                continue
            out = []
            t = time.perf_counter()
            for i in range(0, len(x), 32):
                out.append(run(x[i:i + 32]))
            batch_s[name] = time.perf_counter() - t
            probs[name] = np.concatenate(out)
    ref = probs["torch eager (fp32, channels-last)"]

    print(f"EfficientNet-Lite0, 224 px, 10-class head; {len(x)} Fashion-MNIST test images; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; onnxruntime "
          f"{__import__('onnxruntime').__version__}. Measured on a shared 2-core CPU: compare the ratios, not the "
          "absolute figures.\n")
    base_lat, base_tp = statistics.median(latency[next(iter(runners))]), len(x) / batch_s[next(iter(runners))]
    print("| runtime | batch 1 median ms | batch 1 p95 ms | batch 1 speed-up | batch 32 img/s | batch 32 speed-up "
          "| top-1 agreement with eager | max prob diff | accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in runners:
        lat = sorted(latency[name])
        med, p95 = statistics.median(lat), float(np.percentile(lat, 95))
        tp = len(x) / batch_s[name]
        agree = float((probs[name].argmax(1) == ref.argmax(1)).mean())
        acc = float((probs[name].argmax(1) == labels).mean())
        print(f"| {name} | {med:.1f} | {p95:.1f} | {base_lat / med:.2f}x | {tp:.1f} | {tp / base_tp:.2f}x "
              f"| {agree:.1%} | {np.abs(probs[name] - ref).max():.2g} | {acc:.1%} |")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(tmp.glob("*.onnx")))
    print(f"\nfiles: {sizes}; head fitted in {fit_s:.0f} s, exported in {export_s:.0f} s; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
