"""The backbone's eval forward, each way headstart can run it, and the whole extraction pipeline against it.

EfficientNet-Lite0 (ImageNet weights, offline), fp32 unless said, images/s of ``forward_features`` on random input:

- eager, contiguous and channels-last: the network as timm builds it;
- BatchNorm folded into the convolutions (:func:`headstart.features.forward.fold_batchnorm`), channels-last;
- ONNX Runtime (:class:`headstart.features.forward.OnnxForward`);
- bf16 autocast, folded, channels-last (what ``--precision bf16`` would run; ``auto`` takes it only on CPUs with
  native bf16, :func:`headstart.core.hardware.cpu_has_native_bf16`);

then :func:`headstart.features.extract.iter_features` on image files (decode, resize, crop, normalise, the engine
``auto`` picks) as a share of the fastest of the above. Training steps (forward, backward, AdamW) of ``full`` and
``fine-tune`` (later half of the backbone trainable) in fp32 and bf16 autocast, channels-last, batch 32.

    python benchmarks/backbone_speed.py --images /tmp/speed/data/test --sizes 64 224
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _rate(fn, x, seconds: float = 6.0, min_calls: int = 2) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up
        calls, t0 = 0, time.perf_counter()
        while calls < min_calls or time.perf_counter() - t0 < seconds:
            fn(x)
            calls += 1
    return calls * len(x) / (time.perf_counter() - t0)


def forward_variants(size: int, batch: int = 32, bf16: bool = True) -> dict[str, float]:
    from headstart.features.forward import OnnxForward, fold_batchnorm
    from headstart.zoo.model import build_model

    backbone = build_model("efficientnet_lite0", 10).backbone.eval()
    x = torch.randn(batch, 3, size, size)
    xl = x.contiguous(memory_format=torch.channels_last)
    folded, count = fold_batchnorm(backbone, x[:1])
    folded = folded.to(memory_format=torch.channels_last)
    out = {"eager, contiguous": _rate(backbone, x),
           "eager, channels-last": _rate(backbone.to(memory_format=torch.channels_last), xl),
           f"BatchNorm folded ({count}), channels-last": _rate(folded, xl),
           "ONNX Runtime": _rate(OnnxForward(backbone, x[:1]), x)}
    if bf16:
        def autocast_bf16(v):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return folded(v)

        out["bf16 autocast, folded, channels-last"] = _rate(autocast_bf16, xl[:8], seconds=3.0, min_calls=1)
    return out


def extraction(images: Path, size: int, limit: int = 640) -> dict:
    from headstart.core.runtime import make_runtime
    from headstart.data.sources import read_class_folders
    from headstart.features.extract import iter_features
    from headstart.features.forward import choose_engine
    from headstart.zoo.model import build_model

    runtime = make_runtime("cpu")
    model = runtime.prepare(build_model("efficientnet_lite0", 10)).eval()
    paths = [p for p, _ in read_class_folders(images)[1]][:limit]
    pre = model.spec.preprocessing(size)
    t0 = time.perf_counter()
    n = sum(len(f) for _, f, _ in iter_features(model, paths, pre, runtime, batch_size=64, desc="extraction"))
    return {"images_per_second": n / (time.perf_counter() - t0), "images": n,
            "engine": choose_engine(runtime, len(paths), size, size)}


def training_steps(size: int = 224, batch: int = 32, steps: int = 3) -> dict[str, float]:
    """Images/s of training steps, real loss and AdamW, on random images: the network's cost without the data."""
    from headstart.training.strategy import Phase, enter_phase
    from headstart.zoo.model import build_model

    out = {}
    for strategy, train_from in (("full", 0), ("fine-tune", 0.5)):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = build_model("efficientnet_lite0", 10).to(memory_format=torch.channels_last)
            enter_phase(model, Phase(strategy, epochs=1, lr=1e-4, train_from=train_from))
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            n = batch if precision == "fp32" else max(4, batch // 8)  # bf16 is emulated (slow) without AVX-512 BF16
            x = torch.randn(n, 3, size, size).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (n,))

            def step(model=model, opt=opt, x=x, y=y, bf16=precision == "bf16"):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps if precision == "fp32" else 1):
                step()
            out[f"{strategy}, {precision}"] = (steps if precision == "fp32" else 1) * n / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, help="a folder of class subfolders, for the extraction pipeline")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--no-training", action="store_true")
    args = ap.parse_args()
    rows = {}
    for size in args.sizes:
        rows[f"{size} px forward"] = forward_variants(size)
        if args.images:
            rows[f"{size} px extraction"] = extraction(args.images, size)
        print(json.dumps({k: v for k, v in rows.items() if k.startswith(str(size))}, indent=1), flush=True)
    if not args.no_training:
        rows["224 px training steps"] = training_steps()
        print(json.dumps(rows["224 px training steps"], indent=1))


if __name__ == "__main__":
    main()
