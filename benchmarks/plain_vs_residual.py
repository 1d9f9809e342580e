"""Plain-56 vs ResNet-56 (CIFAR layout) on Fashion-MNIST: He et al.'s degradation experiment, scaled down to a CPU.

Both networks have the same depth, widths and parameter count up to the projection shortcuts; the only difference is
the skip connection. They are trained on the same images, in the same order, from the same seed, for the same budget.

Reported:
  * the gradient norm reaching the first conv (``conv1.weight.grad.norm()``) at initialisation, mean over seeds;
  * per-epoch training loss/accuracy (running mean over the epoch) and test loss/accuracy for both networks.

Writes ``curves.json`` and ``curves.png`` into ``--out``.

Example (the defaults take roughly 6-8 minutes on 2 CPU cores):

    python benchmarks/plain_vs_residual.py --out runs/plain_vs_residual
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from headstart.zoo.resnet import CifarResNet
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from headstart.zoo.resnet import CifarResNet

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

# idx type byte -> numpy dtype (multi-byte types are big-endian); see http://yann.lecun.com/exdb/mnist/
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into an array of its declared shape and dtype.

    Args:
        path: Path to an ``*-idx?-ubyte`` or ``*-idx?-ubyte.gz`` file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic bytes {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=_IDX_DTYPES[dtype_code], offset=4 + 4 * ndim).reshape(dims)


def _find(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"neither {stem} nor {stem}.gz in {data_dir}")


def load_split(data_dir: Path, split: str, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A random subset of a Fashion-MNIST split as (N, 1, 32, 32) floats in [0, 1] and int64 labels.

    Args:
        data_dir: Folder holding the four idx files.
        split: ``"train"`` or ``"t10k"``.
        size: Number of examples to keep (clipped to the split size).
        seed: Seed of the subset draw.
    """
    images = read_idx(_find(data_dir, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{split}-labels-idx1-ubyte"))
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size].numpy()
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)
    # Zero-pad 28x28 to 32x32 so the three stages see 32/16/8 maps, exactly as on CIFAR.
    x = F.pad(x, (2, 2, 2, 2))
    return x, torch.from_numpy(labels[idx].astype(np.int64))


def first_layer_grad_norm(shortcut: bool, seed: int, x: Tensor, y: Tensor) -> float:
    torch.manual_seed(seed)
    model = CifarResNet(56, num_classes=10, shortcut=shortcut, in_chans=1).train()
    F.cross_entropy(model(x), y).backward()
    return model.conv1.weight.grad.norm().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    return loss_sum / len(x), correct / len(x)


def train(
    name: str,
    shortcut: bool,
    data: dict[str, Tensor],
    args: argparse.Namespace,
) -> list[dict[str, float]]:
    torch.manual_seed(args.seed)  # same init draw for both networks
    model = CifarResNet(56, num_classes=10, shortcut=shortcut, in_chans=1).to(memory_format=torch.channels_last)
    # He et al.'s CIFAR recipe (SGD, momentum 0.9, wd 1e-4, lr 0.1), squeezed into a short budget: a linear warmup
    # (at init the residual sum gives ResNet-56 large logits, and lr 0.1 from step 0 wastes the first epoch
    # recovering from that) then a cosine decay. Both networks get exactly the same schedule.
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(data["x_train"]) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = min(total - 1, round(args.warmup_epochs * steps_per_epoch))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    order_gen = torch.Generator().manual_seed(args.seed)  # same batch order for both networks

    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(data["x_train"]), generator=order_gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = data["x_train"][idx].contiguous(memory_format=torch.channels_last)
            yb = data["y_train"][idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
        test_loss, test_acc = evaluate(model, data["x_test"], data["y_test"])
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": time.time() - t0,
        }
        history.append(row)
        print(
            f"  {name:9s} epoch {epoch:2d}/{args.epochs}  train loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.3f}  test acc {row['test_acc']:.3f}  ({row['seconds']:.0f}s)",
            flush=True,
        )
    return history


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or remote machines
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("plain-56", "--"), ("resnet-56", "-")):
        hist = results["curves"][name]
        epochs = [r["epoch"] for r in hist]
        ax_loss.plot(epochs, [r["train_loss"] for r in hist], style, marker="o", label=name)
        ax_acc.plot(epochs, [r["test_acc"] for r in hist], style, marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="train loss (running mean)", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    cfg = results["config"]
    fig.suptitle(f"Fashion-MNIST, {cfg['train_size']} train / {cfg['test_size']} test, 56 layers, same budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-size", type=int, default=5000, help="training examples (random subset)")
    p.add_argument("--test-size", type=int, default=2000, help="test examples (random subset of t10k)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear lr warmup before the cosine decay")
    p.add_argument("--grad-seeds", type=int, default=5, help="seeds averaged for the gradient norm at init")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    p.add_argument("--out", type=Path, default=Path("runs/plain_vs_residual"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    x_train, y_train = load_split(args.data_dir, "train", args.train_size, args.seed)
    x_test, y_test = load_split(args.data_dir, "t10k", args.test_size, args.seed)
    # Normalise with training-set statistics only.
    mean, std = x_train.mean().item(), x_train.std().item()
    data = {
        "x_train": (x_train - mean) / std,
        "y_train": y_train,
        "x_test": (x_test - mean) / std,
        "y_test": y_test,
    }
    print(f"data: {len(x_train)} train / {len(x_test)} test, 1x32x32, {args.threads} threads", flush=True)

    # Gradient reaching conv1 at initialisation, on one real batch, train-mode BN.
    xb, yb = data["x_train"][: args.batch_size], data["y_train"][: args.batch_size]
    grads = {
        name: [first_layer_grad_norm(shortcut, seed, xb, yb) for seed in range(args.grad_seeds)]
        for name, shortcut in (("plain-56", False), ("resnet-56", True))
    }
    print("\nconv1 gradient norm at init (mean +- std over seeds)")
    for name, values in grads.items():
        print(f"  {name:9s} {np.mean(values):10.4g} +- {np.std(values):.3g}   per seed: "
              + ", ".join(f"{v:.4g}" for v in values))
    ratios = [p / r for p, r in zip(grads["plain-56"], grads["resnet-56"])]
    print(f"  plain / residual ratio: mean {np.mean(ratios):.1f} (min {min(ratios):.1f}, max {max(ratios):.1f})")

    print("\ntraining", flush=True)
    curves = {name: train(name, shortcut, data, args) for name, shortcut in (("plain-56", False), ("resnet-56", True))}

    print("\n        |        train loss       |        train acc        |         test acc")
    print("  epoch | plain-56    resnet-56   | plain-56    resnet-56   | plain-56    resnet-56")
    for p, r in zip(curves["plain-56"], curves["resnet-56"]):
        print(
            f"  {p['epoch']:5d} | {p['train_loss']:<11.4f} {r['train_loss']:<11.4f} | {p['train_acc']:<11.3f} "
            f"{r['train_acc']:<11.3f} | {p['test_acc']:<11.3f} {r['test_acc']:<11.3f}"
        )

    results = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"torch": torch.__version__, "command": " ".join(sys.argv)},
        "grad_norm_at_init": {
            name: {"per_seed": values, "mean": float(np.mean(values)), "std": float(np.std(values))}
            for name, values in grads.items()
        }
        | {"plain_over_residual_mean_ratio": float(np.mean(ratios))},
        "curves": curves,
        "total_seconds": time.time() - start,
    }
    (args.out / "curves.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "curves.png")
    print(f"\nwrote {args.out / 'curves.json'} and {args.out / 'curves.png'} ({results['total_seconds']:.0f}s total)")


if __name__ == "__main__":
    main()
