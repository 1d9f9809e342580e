"""One process against two Gloo processes (torchrun) on the same CPU training: metrics and wall time.

    python benchmarks/ddp_gloo.py --per-class 40 --epochs 3

Both runs see the same global batch (2 x B/2 against 1 x B), no augmentation and fp32, so their metrics should
agree to rounding; the wall time shows what DDP costs or gains on this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    import torch

    from headstart.data.fashion_mnist import make_image_folder
    from headstart.zoo import create_backbone

    tmp = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    data = make_image_folder(tmp / "data", train_per_class=args.per_class, val_per_class=10, test_images=0)
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    torch.save(backbone.state_dict(), tmp / "w.pth")
    common = ["train", str(data), "--model", "resnet20", "--strategy", "fine-tune", "--weights", str(tmp / "w.pth"),
              "--epochs", str(args.epochs), "--workers", "0", "--augment", "none", "--precision", "fp32",
              "--device", "cpu", "--patience", "100"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    rows = []
    for name, launcher, batch in (("1 process", [sys.executable, "-m", "headstart"], args.batch_size),
                                  ("2 x Gloo", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                                "-m", "headstart"], args.batch_size // 2)):
        t0 = time.time()
        subprocess.run([*launcher, *common, "--out", str(tmp / name.replace(" ", "")), "--batch-size", str(batch)],
                       env=env, check=True, capture_output=True)
        wall = time.time() - t0
        metrics = [json.loads(x) for x in (tmp / name.replace(" ", "") / "metrics.jsonl").read_text().splitlines()]
        rows.append((name, wall, metrics[-1]))
    print("| run | wall time (s) | final val loss | final val acc | final train loss |")
    print("|---|---:|---:|---:|---:|")
    for name, wall, m in rows:
        print(f"| {name} | {wall:.1f} | {m['val_loss']:.5f} | {m['val_acc']:.4f} "
              f"| {m.get('train_loss', float('nan')):.5f} |")
    print(f"\nwall-time ratio (2 procs / 1 proc): {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
