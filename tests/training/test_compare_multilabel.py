"""headstart compare on a multi-label CSV: the budget is a number of training images, drawn once per seed and budget
for every strategy, every label kept; validation drawn once per seed; the same test images; the figures are mAP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from headstart.cli import main
from headstart.data.mosaic import make_mosaic_set
from headstart.data.multilabel import discover_multilabel, is_multilabel_csv
from headstart.training import compare as compare_module
from headstart.training.config import CompareConfig
from headstart.training.strategy import make_strategy
from tests.conftest import make_class_folder

RARE = 3  # training rows that keep the rare label


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> Path:
    """80 training and 24 test mosaics of 4 garments, one label kept on only 3 training rows (rare), as a CSV."""
    root = tmp_path_factory.mktemp("mosaics")
    made = make_mosaic_set(root / "data", train=80, test=24, classes=4, seed=0, split_column=True)
    rows = list(csv.DictReader(made.open()))
    rare = min({name for r in rows for name in r["labels"].split(";")},
               key=lambda name: sum(name in r["labels"].split(";") for r in rows))
    kept = 0
    for r in rows:
        names = r["labels"].split(";")
        if r["split"] == "train" and rare in names:
            kept += 1
            if kept > RARE:
                r["labels"] = ";".join(n for n in names if n != rare)
    path = root / "data" / "rare.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "labels", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def _fake_train(calls: list):
    """A stand-in for ``train`` that records which manifest each strategy got and answers as a multi-label run."""

    def fake(cfg):
        assert is_multilabel_csv(cfg.data)  # so the real ``train`` hands it to train_multilabel
        calls.append((cfg.strategy, cfg.data, cfg.lr))
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        phases = make_strategy(cfg.strategy, epochs=cfg.epochs or 5, lr=cfg.lr).to_dict()["phases"]
        (out / "config.yaml").write_text(yaml.safe_dump({
            "preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "patience": 3,
            "weights_source": "random initialisation", "strategy_phases": phases, "task": "multilabel"}))
        (out / "metrics.jsonl").write_text("{}\n" * 2)
        score = 0.5 if cfg.strategy == "scratch" else 0.8
        return {"task": "multilabel", "best_val_loss": 1 - score + (cfg.lr or 0), "val_map": score,
                "test_map": score, "test_exact_match": score / 4, "best_epoch": 2, "seconds": 1.0,
                "trainable_params": 10}

    return fake


def _manifest(path: Path) -> dict[str, list[tuple[str, frozenset]]]:
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for r in csv.DictReader(path.open()):
        out[r["split"]].append((r["path"], frozenset(filter(None, r["labels"].split(";")))))
    return out


def test_every_strategy_gets_the_same_stratified_draw_and_the_csv_test_split(mosaics, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare_module, "train", _fake_train(calls))
    monkeypatch.setattr(compare_module, "write_report", lambda out: out)
    out = tmp_path / "cmp"
    cfg = CompareConfig(data=str(mosaics), out=str(out), strategies=["scratch", "linear-probe", "fine-tune"],
                        train_images=[8, 20, 500], seeds=2, val_images=12, scratch_lrs=[1e-3], lr_extensions=0)
    result = compare_module.compare(cfg)

    source = discover_multilabel(mosaics)
    labels = set(source.labels)
    csv_test = {str(Path(p).resolve()) for p, _ in source.test}
    manifests = {p.stem: _manifest(p) for p in (out / "subsets").glob("*.csv")}
    assert sorted(manifests) == ["n20-seed0", "n20-seed1", "n8-seed0", "n8-seed1"]  # 500 > the pool: left out
    for name, m in manifests.items():
        train, val, test = ({p for p, _ in m[s]} for s in ("train", "val", "test"))
        assert len(train) == int(name[1:].split("-")[0]) and len(val) == 12
        assert test == csv_test  # the CSV's test split, the same for every subset
        assert not train & val and not train & test and not val & test
        assert set().union(*(ys for _, ys in m["train"])) == labels  # the rare label too
        assert set().union(*(ys for _, ys in m["val"])) == labels
    for seed in (0, 1):  # validation drawn once per seed, whatever the budget
        assert manifests[f"n8-seed{seed}"]["val"] == manifests[f"n20-seed{seed}"]["val"]
    assert manifests["n8-seed0"]["train"] != manifests["n8-seed1"]["train"]

    # Every strategy trained on the one manifest of its budget and seed.
    by_manifest: dict[str, set] = {}
    for strategy, data, _ in calls:
        by_manifest.setdefault(Path(data).stem, set()).add(strategy)
    assert by_manifest == {name: {"scratch", "linear-probe", "fine-tune"} for name in manifests}

    assert result["task"] == "multilabel" and result["test_images"] == len(csv_test)
    assert {(r["strategy"], r["train_images"]) for r in result["rows"]} == \
        {(s, n) for s in cfg.strategies for n in (8, 20)}
    row = next(r for r in result["rows"] if r["strategy"] == "fine-tune" and r["train_images"] == 8)
    assert row["test_map_mean"] == 0.8 and row["test_exact_match_mean"] == 0.2 and row["seeds"] == 2
    saved = json.loads((out / "compare.json").read_text())
    assert saved["task"] == "multilabel" and saved["figures"] == ["map_vs_train_images.png", "map_vs_time.png"]
    md = (out / "compare.md").read_text()
    assert "| train images | strategy | model | px | test mAP | exact match |" in md
    assert "| 8 | fine-tune | efficientnet_lite0 | 32 | 80.0 ± 0.0 | 20.0 ± 0.0 | 1.0 ± 0.0 | 2.0 |" in md  # mean ± sd
    assert "test acc" not in md and "accuracy" not in md
    assert "Budgets left out: 500 training images" in md and "iterative stratification" in md
    assert "20 images: 0.001" in md  # scratch's chosen rate, by budget
    for name in saved["figures"]:
        assert (out / name).stat().st_size > 100


def test_without_a_test_split_a_stratified_part_is_held_out_and_never_trained_on(tmp_path, monkeypatch):
    made = make_mosaic_set(tmp_path / "data", train=70, test=0, classes=3, seed=2)  # no split column
    calls = []
    monkeypatch.setattr(compare_module, "train", _fake_train(calls))
    monkeypatch.setattr(compare_module, "write_report", lambda out: out)
    cfg = CompareConfig(data=str(made), out=str(tmp_path / "cmp"), strategies=["linear-probe"], train_images=[10],
                        seeds=1, test_fraction=0.3, max_test=15)
    result = compare_module.compare(cfg)
    m = _manifest(tmp_path / "cmp" / "subsets" / "n10-seed0.csv")
    train, val, test = ({p for p, _ in m[s]} for s in ("train", "val", "test"))
    assert len(test) == result["test_images"] == 15 and len(val) == 10 * 3  # val_per_class x labels by default
    assert not test & (train | val)
    labels = set(discover_multilabel(made).labels)
    assert set().union(*(ys for _, ys in m["test"])) == labels


def test_the_budget_options_belong_to_their_kind_of_data(mosaics, tmp_path, capsys):
    assert main(["compare", str(mosaics), "--out", str(tmp_path / "a"), "--labels-per-class", "5"]) == 2
    assert "--train-images" in capsys.readouterr().err
    folder = make_class_folder(tmp_path / "d", per_class=2)
    assert main(["compare", str(folder), "--out", str(tmp_path / "b"), "--train-images", "50"]) == 2
    assert "--labels-per-class" in capsys.readouterr().err
    assert main(["compare", str(mosaics), "--out", str(tmp_path / "c"), "--train-images", "0,10"]) == 2
    assert "training images" in capsys.readouterr().err


def test_a_pool_too_small_for_any_budget_or_an_empty_budget_is_refused_in_one_sentence(mosaics, tmp_path):
    cfg = CompareConfig(data=str(mosaics), out=str(tmp_path / "c"), train_images=[100, 200], val_images=10)
    with pytest.raises(compare_module.UsageError, match="70 images .* beside 10 validation images"):
        compare_module.compare(cfg)
    with pytest.raises(compare_module.UsageError, match="1 or more"):
        compare_module.compare(CompareConfig(data=str(mosaics), out=str(tmp_path / "d"), train_images=[0, 10]))


@pytest.mark.slow
def test_compare_trains_every_strategy_on_a_multilabel_csv_and_reports_map(mosaics, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(mosaics), "--out", str(out), "--strategies", "linear-probe,fine-tune,scratch",
                 "--train-images", "16,40", "--seeds", "1", "--val-images", "16", "--epochs", "1",
                 "--scratch-epochs", "2", "--scratch-lrs", "1e-3", "--lr-extensions", "0", "--image-size", "32",
                 "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "test mAP on 24 held-out images" in printed and "map_vs_train_images.png" in printed
    result = json.loads((out / "compare.json").read_text())
    assert len(result["runs"]) == 3 * 2
    for r in result["runs"]:
        run = out / "runs" / f"{r['strategy']}-n{r['train_images']}-seed0"
        if r["strategy"] == "scratch":
            run = run.with_name(run.name + "-lr0.001")  # scratch's one rate, its own run
        summary = json.loads((run / "summary.json").read_text())
        assert summary["task"] == "multilabel" and summary["train_images"] == r["train_images"]
        assert r["test_map"] == summary["test_map"] and 0 < r["test_map"] <= 1
        assert 0 <= r["test_exact_match"] <= 1 and r["seconds"] > 0
    assert {r["model"] for r in result["runs"] if r["strategy"] == "scratch"} == {"resnet20"}
    best = {r["strategy"]: r["test_map_mean"] for r in result["rows"] if r["train_images"] == 40}
    assert best["linear-probe"] > 0.5  # 4 labels on about half the images each: chance mAP is about their frequency
    page = (out / "report.html").read_text()
    assert "test mAP" in page and "train images" in page and "Test mAP (macro) against labelled training" in page
    assert np.isfinite([r["test_map_mean"] for r in result["rows"]]).all()
