"""headstart compare: every strategy sees the same subsets and test images; outputs are complete; scratch chooses
its learning rate on validation."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from headstart import compare as compare_module
from headstart.cli import main
from headstart.engine.loop import TrainingDiverged
from headstart.train import TrainConfig
from tests.conftest import make_class_folder


@pytest.mark.slow
def test_compare_runs_every_cell_on_the_same_images(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=14, size=32)
    out = tmp_path / "cmp"
    code = main(["compare", str(data), "--out", str(out), "--strategies", "scratch,linear-probe",
                 "--labels-per-class", "2,4", "--seeds", "2", "--val-per-class", "2", "--epochs", "1",
                 "--scratch-epochs", "2", "--image-size", "64", "--batch-size", "8"])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2
    assert {(r["strategy"], r["labels_per_class"]) for r in result["rows"]} == \
        {(s, n) for s in ("scratch", "linear-probe") for n in (2, 4)}
    assert all(r["seeds"] == 2 for r in result["rows"])
    assert {r["model"] for r in result["runs"] if r["strategy"] == "scratch"} == {"resnet20"}
    assert {r["model"] for r in result["runs"] if r["strategy"] == "linear-probe"} == {"efficientnet_lite0"}
    # Same test images for every subset; training subsets of the right size, disjoint from validation.
    tests, sizes = set(), {}
    for manifest in (out / "subsets").glob("*.csv"):
        rows = list(csv.DictReader(manifest.open()))
        tests.add(frozenset(r["path"] for r in rows if r["split"] == "test"))
        train = {r["path"] for r in rows if r["split"] == "train"}
        assert not train & {r["path"] for r in rows if r["split"] == "val"}
        sizes[manifest.stem] = len(train)
    assert len(tests) == 1 and len(next(iter(tests))) == result["test_images"] > 0
    assert sizes == {"n2-seed0": 6, "n4-seed0": 12, "n2-seed1": 6, "n4-seed1": 12}
    for name in ("compare.md", "accuracy_vs_labels.png", "accuracy_vs_time.png"):
        assert (out / name).stat().st_size > 100
    assert "test accuracy" in capsys.readouterr().out


def test_compare_rejects_unknown_strategy(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=2)
    assert main(["compare", str(data), "--out", str(tmp_path / "o"), "--strategies", "scratch,magic"]) == 2
    assert "magic" in capsys.readouterr().err


def test_scratch_trains_every_rate_and_keeps_the_lowest_validation_loss(tmp_path):
    data = make_class_folder(tmp_path / "d", per_class=8, size=24)
    out = tmp_path / "cmp"
    assert main(["compare", str(data), "--out", str(out), "--strategies", "scratch", "--labels-per-class", "3",
                 "--seeds", "1", "--val-per-class", "2", "--scratch-epochs", "2", "--scratch-patience", "5",
                 "--scratch-lrs", "1e-4,3e-2", "--image-size", "40", "--batch-size", "8"]) == 0
    run = json.loads((out / "compare.json").read_text())["runs"][0]
    sweep = run["lr_sweep"]
    assert [c["lr"] for c in sweep] == [1e-4, 3e-2]
    for c in sweep:  # each rate is a full run of its own, recorded as it ended
        summary = json.loads((out / "runs" / f"scratch-n3-seed0-lr{c['lr']:g}" / "summary.json").read_text())
        assert summary["best_val_loss"] == c["best_val_loss"] and c["epochs_run"] == 2
    best = min(sweep, key=lambda c: c["best_val_loss"])
    assert run["lr"] == best["lr"] and run["test_acc"] == best["test_acc"] and run["best_val_loss"] == \
        best["best_val_loss"]
    assert run["seconds"] == pytest.approx(sum(c["seconds"] for c in sweep))
    assert run["image_size"] == 40  # the same pixels as the pretrained side, not resnet20's native 32
    md = (out / "compare.md").read_text()
    assert "{0.0001, 0.03}" in md and f"3 labels: {best['lr']:g}" in md and "up to 2 epochs" in md


def test_a_diverged_rate_loses_and_the_others_compete(tmp_path, monkeypatch):
    def fake_train(cfg):
        if cfg.lr > 1:
            raise TrainingDiverged("the training loss became nan")
        out = Path(cfg.out)
        out.mkdir(parents=True)
        (out / "config.yaml").write_text(yaml.safe_dump({"preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
                                                         "weights_source": "random initialisation"}))
        (out / "metrics.jsonl").write_text("{}\n" * 3)
        return {"best_val_loss": abs(cfg.lr - 0.01), "val_acc": 0.5, "test_acc": cfg.lr, "best_epoch": 2,
                "seconds": 1.0}

    monkeypatch.setattr(compare_module, "train", fake_train)
    best, sweep = compare_module.sweep_lr(TrainConfig(data="d", out=str(tmp_path / "r")), [1e-3, 1e-2, 10.0])
    assert best["lr"] == 1e-2 and best["test_acc"] == 1e-2
    assert [c.get("diverged", False) for c in sweep] == [False, False, True]
    with pytest.raises(TrainingDiverged, match="every scratch learning rate"):
        compare_module.sweep_lr(TrainConfig(data="d", out=str(tmp_path / "s")), [10.0, 20.0])
