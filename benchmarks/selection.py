"""Fair selection: which phase a two-phase run ships, chosen by raw validation loss (before) or by the validation
loss after each phase's own temperature (now), and what each choice scores on the test images.

Reads finished runs of ``fine-tune``, ``gradual`` or ``lp-ft`` (their first phase is a linear probe on features,
their last a network trained by gradient descent), e.g. the runs ``benchmarks/data_efficiency.py`` or
``benchmarks/recipes.py`` leave behind, and for each:

- the phase the old rule would ship (lowest raw validation loss over every epoch of every phase) and the phase the
  run shipped (lowest calibrated validation loss: ``summary.json``'s ``best_phase``);
- the test accuracy of the probe as the old code shipped it (fitted on the training images only, recomputed from
  the cached features exactly as the run fitted it), of the probe as shipped now (refitted on train + validation),
  and of the last phase's best weights (``phase_best.safetensors``);
- the test accuracy of what each rule ships, and the test ECE of the shipped model before and after its temperature.

    python benchmarks/selection.py RUN_DIR... [--test-dir DIR] [--out FILE]   # each run's test split, or DIR's
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.core.io import load_weights
from headstart.data.dataset import ImageFiles, make_loader
from headstart.data.sources import DataSplits, read_class_folders
from headstart.data.transforms import eval_transform
from headstart.features import extract_features, fit_head
from headstart.predict.calibration import compare_calibration
from headstart.predict.run import load_run, predict_loader, probs_from_logits
from headstart.training.heads import refit_head


def _features(run, samples):
    f = extract_features(run.model, [p for p, _ in samples], run.preprocessing, run.runtime, desc="features",
                         verbose=False)
    return f.array(), np.array([samples[i][1] for i in f.positions])


def _test(run, test) -> tuple[float, dict]:
    """Test accuracy, and calibration before and after the run's temperature."""
    loader = make_loader(ImageFiles(test, eval_transform(run.preprocessing)), 128, shuffle=False)
    logits, labels = predict_loader(run, loader, desc="test")
    cal = compare_calibration(probs_from_logits(logits).numpy(), probs_from_logits(logits, run.temperature).numpy(),
                              labels.numpy(), run.temperature)
    return float((logits[0].argmax(1) == labels).float().mean()), cal


def measure(run_dir: Path, test_dir: str | None = None) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    splits = DataSplits.from_json(json.loads((run_dir / "split.json").read_text()))
    test = read_class_folders(Path(test_dir), splits.classes)[1] if test_dir else splits.test
    if not test:
        raise ValueError(f"{run_dir} has no test split; pass --test-dir.")
    phases = list(dict.fromkeys(r["phase"] for r in records))
    probe_phase, last_phase = phases[0], phases[-1]
    old_choice = min(records, key=lambda r: r["val_loss"])["phase"]
    new_choice = summary["best_phase"]
    run = load_run(run_dir)
    shipped, cal = _test(run, test)
    # The probe as the run fitted it (same features, same code), then as refitted.
    x_tr, y_tr = _features(run, splits.train)
    x_val, y_val = _features(run, splits.val)
    x_te, y_te = _features(run, test)
    k = len(splits.classes)
    head = fit_head("logreg", x_tr, y_tr, x_val, y_val, k)
    refit = refit_head("logreg", np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val]), k, head.info)
    probe_acc = float((head.logits(x_te).argmax(1) == y_te).mean())
    probe_refit_acc = float((refit.logits(x_te).argmax(1) == y_te).mean())
    # The last phase's own best weights.
    last_acc = None
    if (run_dir / "phase_best.safetensors").is_file():
        run.model.load_state_dict(load_weights(run_dir / "phase_best.safetensors"))
        last_acc = _test(run, test)[0]
    return {"run": run_dir.name, "strategy": summary["strategy"], "old_choice": old_choice, "new_choice": new_choice,
            "old_ships_trained": old_choice == last_phase, "new_ships_trained": new_choice == last_phase,
            "probe_acc": probe_acc, "probe_refit_acc": probe_refit_acc, "last_phase_acc": last_acc,
            "old_shipped_acc": probe_acc if old_choice == probe_phase else last_acc,
            "new_shipped_acc": shipped, "temperature": run.temperature,
            "test_ece_before": cal["ece_before"], "test_ece_after": cal["ece_after"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories of fine-tune, gradual or lp-ft")
    p.add_argument("--test-dir", default=None, help="class folders to test on (default: each run's test split)")
    p.add_argument("--out", default=None, help="write the rows and the table as JSON here")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = []
    for r in args.runs:
        row = measure(Path(r), args.test_dir)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = ["| strategy | runs | trained weights shipped: raw loss → calibrated | shipped test acc: before → now "
             "| test ECE of what ships: T = 1 → fitted T |", "|---|---:|---:|---:|---:|"]
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == strategy]

        def mean(key):
            v = [100 * r[key] for r in rs if r.get(key) is not None]
            return f"{statistics.mean(v):.1f}" if v else "-"

        table.append(f"| {strategy} | {len(rs)} | {sum(r['old_ships_trained'] for r in rs)} → "
                     f"{sum(r['new_ships_trained'] for r in rs)} | {mean('old_shipped_acc')} → "
                     f"{mean('new_shipped_acc')} | {mean('test_ece_before')} → {mean('test_ece_after')} |")
    text = "\n".join(table)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
