"""headstart compare: every strategy sees the same subsets and test images; outputs are complete; scratch chooses
its learning rate on validation."""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from headstart.cli import main
from headstart.training import compare as compare_module
from headstart.training.loop import TrainingDiverged
from headstart.training.strategy import make_strategy
from headstart.training.train import TrainConfig
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
                 "--scratch-lrs", "1e-4,3e-2", "--lr-extensions", "0", "--image-size", "40",
                 "--batch-size", "8"]) == 0
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
    # Two rates and no widening: the winner is one of the edges, and the outputs say so.
    assert run["lr_edge"] == ("lower" if best["lr"] == 1e-4 else "upper") and run["lr_grid"] == [1e-4, 3e-2]
    assert f"3 labels: {best['lr']:g} ({run['lr_edge']} edge)" in md and "Warning: at the edge of the grid" in md


def test_a_diverged_rate_loses_and_the_others_compete(tmp_path, monkeypatch):
    def fake_train(cfg):
        if cfg.lr > 1:
            raise TrainingDiverged("the training loss became nan")
        out = Path(cfg.out)
        out.mkdir(parents=True)
        preprocessing = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
        (out / "config.yaml").write_text(yaml.safe_dump({"preprocessing": preprocessing,
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


def _fake_train(best_lr: float, calls: list):
    """A stand-in for ``train`` whose validation loss is smallest at ``best_lr`` (and grows with the distance in
    log rate); rates of 1 and more diverge. Records the rates it was called with in ``calls``."""

    def fake(cfg):
        calls.append((cfg.strategy, cfg.lr))
        if cfg.lr is not None and cfg.lr >= 1:
            raise TrainingDiverged("the training loss became nan")
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        phases = make_strategy(cfg.strategy, epochs=cfg.epochs or 5, lr=cfg.lr).to_dict()["phases"]
        (out / "config.yaml").write_text(yaml.safe_dump({
            "preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "patience": 3,
            "weights_source": "random initialisation", "strategy_phases": phases}))
        (out / "metrics.jsonl").write_text("{}\n" * 3)
        loss = 1.0 + abs(math.log10((cfg.lr or best_lr) / best_lr))
        return {"best_val_loss": loss, "val_acc": 0.5, "test_acc": 1 / loss, "test_balanced_acc": 1 / loss,
                "best_epoch": 2, "seconds": 1.0, "trainable_params": 10}

    return fake


def _sweep(tmp_path, monkeypatch, best_lr, lrs, **kwargs):
    calls = []
    monkeypatch.setattr(compare_module, "train", _fake_train(best_lr, calls))
    best, sweep = compare_module.sweep_lr(TrainConfig(data="d", out=str(tmp_path / "r"), strategy="scratch"), lrs,
                                          **kwargs)
    assert [lr for _, lr in calls] == [c["lr"] for c in sweep]  # every rate tried is recorded, once, in order
    return best, sweep


def test_a_lower_edge_winner_widens_the_grid_downwards_until_it_is_interior(tmp_path, monkeypatch):
    best, sweep = _sweep(tmp_path, monkeypatch, 1e-4, [1e-3, 3e-3])
    assert [(c["lr"], c["extension"]) for c in sweep] == [(1e-3, 0), (3e-3, 0), (3e-4, 1), (1e-4, 2), (3e-5, 3)]
    assert best["lr"] == 1e-4 and best["lr_edge"] is None and best["lr_grid"] == [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]


def test_an_upper_edge_winner_widens_upwards_and_stops_once_interior(tmp_path, monkeypatch):
    best, sweep = _sweep(tmp_path, monkeypatch, 1e-2, [1e-3, 3e-3])
    assert [c["lr"] for c in sweep] == [1e-3, 3e-3, 1e-2, 3e-2]
    assert best["lr"] == 1e-2 and best["lr_edge"] is None


def test_an_interior_winner_adds_no_rate(tmp_path, monkeypatch):
    best, sweep = _sweep(tmp_path, monkeypatch, 3e-3, [3e-3, 1e-3, 1e-2])
    assert [c["lr"] for c in sweep] == [1e-3, 3e-3, 1e-2]  # run in increasing order
    assert best["lr"] == 3e-3 and best["lr_edge"] is None and best["lr_grid"] == [1e-3, 3e-3, 1e-2]


def test_the_widening_stops_at_the_cap_and_records_the_edge(tmp_path, monkeypatch):
    best, sweep = _sweep(tmp_path, monkeypatch, 1e-7, [1e-3, 3e-3], max_extensions=2)
    assert [c["lr"] for c in sweep] == [1e-3, 3e-3, 3e-4, 1e-4]
    assert best["lr"] == 1e-4 and best["lr_edge"] == "lower"
    best, sweep = _sweep(tmp_path, monkeypatch, 1e-7, [1e-3, 3e-3], max_extensions=0)
    assert [c["lr"] for c in sweep] == [1e-3, 3e-3] and best["lr_edge"] == "lower"


def test_a_diverged_rate_counts_as_worse_so_its_neighbour_is_not_at_the_edge(tmp_path, monkeypatch):
    # 3 diverges: 1 is the best rate that finished, but it sits below a worse (diverged) one, so only the lower
    # side widens; 0.3 is worse than 1, and 1 is interior.
    best, sweep = _sweep(tmp_path, monkeypatch, 0.9, [0.1, 0.3, 0.9, 3.0])
    assert [c["lr"] for c in sweep] == [0.1, 0.3, 0.9, 3.0]
    assert best["lr"] == 0.9 and best["lr_edge"] is None and sweep[-1]["diverged"]


def test_a_one_rate_grid_widens_on_both_sides(tmp_path, monkeypatch):
    best, sweep = _sweep(tmp_path, monkeypatch, 1e-3, [1e-3])
    assert [c["lr"] for c in sweep] == [1e-3, 3e-4, 3e-3] and best["lr_edge"] is None


def test_next_rate_keeps_the_ratio_and_the_half_decade_ladder():
    assert compare_module.next_rate([1e-3, 3e-3], "lower") == 3e-4
    assert compare_module.next_rate([3e-4, 1e-3, 3e-3], "lower") == 1e-4
    assert compare_module.next_rate([1e-3, 3e-3], "upper") == 1e-2
    assert compare_module.next_rate([1e-3, 2e-3], "upper") == 4e-3
    assert compare_module.next_rate([1e-3, 2e-3], "lower") == 5e-4


def test_compare_sweeps_the_pretrained_rates_given_and_says_what_each_side_got(tmp_path, monkeypatch):
    """--lrs applies to the strategies that train by gradient descent, not to linear-probe; without it they run at
    their default rate and compare.md says so; a winner left at the edge is a warning in compare.md."""
    data = make_class_folder(tmp_path / "d", per_class=6, size=16)
    calls = []
    monkeypatch.setattr(compare_module, "train", _fake_train(1e-7, calls))
    monkeypatch.setattr(compare_module, "write_report", lambda out: out)
    cfg = compare_module.CompareConfig(data=str(data), out=str(tmp_path / "c"),
                                       strategies=["scratch", "linear-probe", "fine-tune"], labels_per_class=[2],
                                       seeds=1, val_per_class=1, scratch_lrs=[1e-3, 3e-3], lrs=[1e-4, 3e-4],
                                       lr_extensions=1)
    result = compare_module.compare(cfg)
    assert [lr for s, lr in calls if s == "linear-probe"] == [None]
    assert [lr for s, lr in calls if s == "fine-tune"] == [1e-4, 3e-4, 3e-5]
    assert [lr for s, lr in calls if s == "scratch"] == [1e-3, 3e-3, 3e-4]
    by = {r["strategy"]: r for r in result["runs"]}
    assert by["fine-tune"]["lr_edge"] == by["scratch"]["lr_edge"] == "lower"
    assert by["linear-probe"]["lr_source"] == "not used" and by["fine-tune"]["lr_source"] == "swept"
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "Warning: at the edge of the grid" in md
    assert "fine-tune, 2 labels/class, seed 0: 3e-05 is the lower edge" in md
    assert "chooses its own C" in md and "from {0.0001, 0.0003}" in md

    calls.clear()
    cfg = compare_module.CompareConfig(data=str(data), out=str(tmp_path / "e"), strategies=["fine-tune"],
                                       labels_per_class=[2], seeds=1, val_per_class=1)
    compare_module.compare(cfg)
    assert calls == [("fine-tune", None)]
    md = (tmp_path / "e" / "compare.md").read_text()
    assert "default rate, not swept" in md and "Warning" not in md
