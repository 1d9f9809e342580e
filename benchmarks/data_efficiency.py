"""How many labels transfer learning saves: test accuracy against labelled images per class, for training from
scratch, a linear probe, fine-tuning the later half and fine-tuning everything, on Fashion-MNIST.

Runs ``headstart compare`` (every strategy on the same per-seed subsets, one fixed balanced test set) and copies
its plot and numbers to ``--docs`` (the README's figure):

    python benchmarks/data_efficiency.py --out /tmp/data-efficiency   # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.compare import CompareConfig, compare
from headstart.data.fashion_mnist import make_image_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/data-efficiency")
    p.add_argument("--strategies", default="scratch,linear-probe,fine-tune,full")
    p.add_argument("--labels-per-class", default="5,10,25,50,100")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--scratch-epochs", type=int, default=30)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs"),
                   help="where the plot and the numbers are copied ('' to skip)")
    args = p.parse_args(argv)
    out = Path(args.out)
    data = out / "fashion-mnist"
    budgets = [int(n) for n in args.labels_per_class.split(",")]
    if not data.exists():
        # Enough training images for the largest budget; validation is drawn per seed by compare.
        make_image_folder(data, train_per_class=max(budgets) + 20, val_per_class=0, test_images=args.test_images)
    compare(CompareConfig(data=str(data), out=str(out), strategies=args.strategies.split(","),
                          labels_per_class=budgets, seeds=args.seeds, val_per_class=20, epochs=args.epochs,
                          scratch_epochs=args.scratch_epochs, image_size=args.image_size))
    print((out / "compare.md").read_text())
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for src, dst in (("compare.json", "data_efficiency_fashion_mnist.json"),
                         ("compare.md", "data_efficiency_fashion_mnist.md")):
            shutil.copy2(out / src, docs / dst)
        shutil.copy2(out / "accuracy_vs_labels.png", docs / "data_efficiency_fashion_mnist.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
