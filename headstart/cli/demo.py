"""headstart demo [--out DIR]: the built-in main job on Fashion-MNIST."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from headstart.cli.compare import _ints, print_table
from headstart.core.errors import UsageError
from headstart.training.config import CompareConfig


def add_parser(sub):
    p = sub.add_parser("demo", help="transfer learning vs. scratch on a small labelled Fashion-MNIST (about 6 min on "
                                    "a 2-core CPU)",
                       description="Makes a small labelled Fashion-MNIST (50 images per class to train, 20 per class "
                                   "to validate, 2,000 test images), then compares linear-probe and fine-tune from "
                                   "EfficientNet-Lite0 against training a small ResNet from scratch. Measured on a "
                                   "2-core CPU: about 1 minute for the probe, 2 for fine-tune, 2 for scratch (its "
                                   "learning rate is chosen from two full runs).",
                       epilog="examples:\n  headstart demo\n"
                              "  headstart demo --labels-per-class 5,10,25 --out runs/curve",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="folder for the data, the runs and the comparison (default "
                                                      "runs/demo)")
    p.add_argument("--labels-per-class", default="50", help="training labels per class, comma-separated, e.g. "
                                                             "5,10,25,50,100 (default 50)")
    p.add_argument("--seeds", type=int, default=1, help="repeats with different draws of the labels (default 1)")
    p.add_argument("--test-images", type=int, default=2000, help="balanced test images (default 2000)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (early stopping may end sooner)")
    p.add_argument("--scratch-epochs", type=int, default=20, help="scratch epochs (default 20)")
    p.add_argument("--val-per-class", type=int, default=20, help="validation images per class (early stopping and "
                                                                  "the probe's regularisation; not training labels)")
    p.add_argument("--image-size", type=int, default=160, help="input size for the pretrained model "
                                                                "(224 is its native size: slower, ~2 points better)")
    return p


MARKER = ".made-by-headstart-demo"


def run(args) -> int:
    from headstart.data.fashion_mnist import make_image_folder  # PIL, urllib: not at import time (--help stays fast)
    from headstart.training.compare import compare  # torch: not at import time, so --help stays fast

    out = Path(args.out)
    labels = _ints(args.labels_per_class)
    data = out / "fashion-mnist"
    need = max(labels) + args.val_per_class
    have = len(list((data / "train" / "bag").glob("*.png"))) if (data / "train" / "bag").is_dir() else 0
    if have != need or len(list((data / "test").rglob("*.png"))) != args.test_images:
        if data.exists():
            if not (data / MARKER).is_file():  # never delete what the demo did not make
                raise UsageError(f"{data} exists and was not made by `headstart demo`; pass another --out.")
            shutil.rmtree(data)
        # Enough training images for the largest budget plus validation, and a balanced test set.
        make_image_folder(data, train_per_class=need, val_per_class=0, test_images=args.test_images)
        (data / MARKER).write_text("made by headstart demo; it may delete and remake this folder\n")
    result = compare(CompareConfig(data=str(data), out=str(out), strategies=["linear-probe", "fine-tune", "scratch"],
                                   labels_per_class=labels, seeds=args.seeds, epochs=args.epochs,
                                   scratch_epochs=args.scratch_epochs, val_per_class=args.val_per_class,
                                   # Fashion-MNIST's images have 28 px: resnet20 learns as well at 32 px as at 64
                                   # (benchmarks/data_efficiency.py) and 25x faster than at the probe's 160.
                                   image_size=args.image_size, scratch_image_size=32))
    print_table(result)
    print(f"written: {out}/compare.md, accuracy_vs_labels.png; each run's model is in {out}/runs/ "
          f"(try: headstart predict {out}/runs/fine-tune-n{labels[-1]}-seed0 {data}/test/bag)")
    return 0
