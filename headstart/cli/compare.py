"""headstart compare DATA --out DIR"""

from __future__ import annotations

from headstart.zoo import DEFAULT_MODEL


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"expected comma-separated whole numbers such as 5,10,25, got '{text}'.") from None


def add_parser(sub):
    p = sub.add_parser("compare", help="measure transfer-learning strategies against training from scratch",
                       description="Every strategy x labels-per-class x seed on the same images; writes "
                                   "compare.json, compare.md and plots into --out.")
    add_arguments(p)
    return p


def add_arguments(p, labels: str = "5,10,25,50,100", seeds: int = 3, strategies="scratch,linear-probe,fine-tune"):
    p.add_argument("data", help="folder of class subfolders (a test/ split is used as the test set if present)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--scratch-model", default=None, help="model for scratch (default: resnet20 for images of 64 px "
                                                         "or less, else --model)")
    p.add_argument("--strategies", default=strategies)
    p.add_argument("--labels-per-class", default=labels)
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--max-test", type=int, default=None, help="cap the number of test images")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--scratch-epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--budget-minutes", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=32)


def config_from_args(args):
    from headstart.compare import CompareConfig
    from headstart.strategy import STRATEGIES

    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}.")
    return CompareConfig(data=args.data, out=args.out, model=args.model, strategies=strategies,
                         labels_per_class=_ints(args.labels_per_class), seeds=args.seeds,
                         val_per_class=args.val_per_class, max_test=args.max_test, epochs=args.epochs,
                         scratch_epochs=args.scratch_epochs, scratch_model=args.scratch_model,
                         image_size=args.image_size, budget_minutes=args.budget_minutes, batch_size=args.batch_size)


def print_table(result: dict) -> None:
    from rich.table import Table

    from headstart.cli.console import console

    table = Table(title=f"test accuracy on {result['test_images']} held-out images (mean ± std over seeds)")
    for col in ("labels/class", "strategy", "model", "test acc", "balanced acc", "wall time", "trainable params"):
        table.add_column(col, justify="left" if col in ("strategy", "model") else "right")
    for r in result["rows"]:
        table.add_row(str(r["labels_per_class"]), r["strategy"], r["model"],
                      f"{100 * r['test_acc_mean']:.1f}% ± {100 * r['test_acc_std']:.1f}",
                      f"{100 * r['test_balanced_acc_mean']:.1f}%", f"{r['seconds_mean']:.0f} s",
                      f"{r['trainable_params']:,}")
    console().print(table)


def run(args) -> int:
    from headstart.compare import compare

    result = compare(config_from_args(args))
    print_table(result)
    print(f"written: {args.out}/compare.json, compare.md, accuracy_vs_labels.png, accuracy_vs_time.png")
    return 0
