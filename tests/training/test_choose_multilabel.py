"""train --choose on a multi-label CSV: each candidate's frozen features, the per-label probe, cross-validated over
train + validation by binary cross-entropy (mAP beside it), the test images never looked at; with --budget too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from headstart.cli import main
from headstart.data.mosaic import make_mosaic_set
from headstart.training import choose
from headstart.training.multilabel import cross_fitted_label_logits, fit_label_heads, label_folds


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """30 training and 8 test mosaics of 3 Fashion-MNIST garments (a split column)."""
    return make_mosaic_set(tmp_path_factory.mktemp("choose-multilabel"), train=30, test=8, classes=3, seed=0,
                           split_column=True)


def test_choose_backbone_scores_multilabel_splits_without_the_test_images(manifest, monkeypatch):
    """Two resnet20 'candidates' (random weights, the network at two sizes): the multi-label figures, the lowest
    cross-validated BCE wins, and only train + validation images are looked at."""
    from headstart.core.runtime import make_runtime
    from headstart.data.multilabel import discover_multilabel
    from headstart.zoo.model import build_model

    looked_at = []
    extract = choose.extract_features
    monkeypatch.setattr(choose, "candidates", lambda preset: [choose.Candidate("resnet20", 32),
                                                              choose.Candidate("resnet20", 48)])
    monkeypatch.setattr(choose, "build_model", lambda name, n, pretrained: build_model(name, n, pretrained=False))
    monkeypatch.setattr(choose, "extract_features",
                        lambda model, paths, *a, **k: looked_at.extend(paths) or extract(model, paths, *a, **k))
    splits = discover_multilabel(manifest)
    said = []
    found = choose.choose_backbone(splits, "fast", make_runtime("cpu", "fp32"), seed=0, log=said.append)
    assert found["task"] == "multilabel" and len(found["candidates"]) == 2
    best = min(found["candidates"], key=lambda r: r["cv_loss"])
    assert found["winner"] == {"backbone": "resnet20", "size": best["size"]}
    assert "binary cross-entropy, mean over labels" in found["reason"]
    for r in found["candidates"]:
        assert r["images"] == len(splits.train) + len(splits.val) and r["folds"] == 5
        assert {"cv_map", "cv_loss", "val_map", "val_loss"} <= set(r) and "cv_acc" not in r
        assert 0 < r["cv_map"] <= 1 and r["cv_loss"] > 0
    assert set(looked_at) == {p for p, _ in splits.train + splits.val}
    assert not set(looked_at) & {p for p, _ in splits.test} and len(splits.test) == 8
    assert sum("cross-validated mAP" in line for line in said) == 2


@pytest.mark.slow
def test_choose_scores_candidates_by_cross_validated_bce_and_trains_the_winner(manifest, tmp_path, capsys,
                                                                               monkeypatch):
    looked_at = []
    extract = choose.extract_features

    def spy(model, paths, *args, **kwargs):
        looked_at.extend(paths)
        return extract(model, paths, *args, **kwargs)

    monkeypatch.setattr(choose, "extract_features", spy)
    run = tmp_path / "run"
    assert main(["train", str(manifest), "--out", str(run), "--strategy", "linear-probe", "--choose", "fast",
                 "--workers", "0"]) == 0
    choice = json.loads((run / "backbone_choice.json").read_text())
    assert choice["task"] == "multilabel"
    scored = [r for r in choice["candidates"] if "cv_loss" in r]
    assert {(r["backbone"], r["size"]) for r in scored} == {("efficientnet_lite0", 128), ("efficientnet_lite0", 224)}
    best = min(scored, key=lambda r: r["cv_loss"])  # the lowest cross-validated BCE wins
    assert choice["winner"] == {"backbone": best["backbone"], "size": best["size"]}
    assert best["cv_loss_above_lowest"] == 0 and all(r["difference_se"] is not None for r in scored)
    for r in scored:  # every train + validation image, scored out of fold; mAP recorded beside the loss
        assert r["images"] == 30 and r["folds"] == 5
        assert 0.5 < r["cv_map"] <= 1 and 0 < r["cv_loss"] < np.log(2) and 0 < r["val_map"] <= 1
        assert "cv_acc" not in r
    split = json.loads((run / "split.json").read_text())
    test_paths = {p for p, _ in split["test"]}
    assert len(test_paths) == 8 and not test_paths & set(looked_at)  # the test images were never looked at
    assert set(looked_at) == {p for s in ("train", "val") for p, _ in split[s]}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "multilabel" and config["choose"] is None
    assert (config["model"], config["image_size"]) == (best["backbone"], best["size"])
    assert config["backbone_choice"]["winner"] == choice["winner"]
    assert "binary cross-entropy" in config["backbone_choice"]["reason"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["test_map"] > 0.5
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Backbone chosen" in report and "cross-validated mAP" in report
    err = capsys.readouterr().err
    assert "cross-validated mAP" in err and f"chose {best['backbone']} at {best['size']} px" in err


@pytest.mark.slow
def test_choose_with_a_budget_fine_tunes_the_winner_in_time(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(manifest), "--out", str(run), "--choose", "fast", "--budget", "10m", "--epochs", "1",
                 "--workers", "0", "--no-report"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    choice = json.loads((run / "backbone_choice.json").read_text())
    assert config["backbone_choice"]["winner"] == choice["winner"] and config["task"] == "multilabel"
    assert config["budget_plan"]["strategy"] == "fine-tune" and config["budget_plan"]["budget_s"] == 600
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"]["within"] and summary["test_map"] > 0.5
    assert "budget 600 s" in capsys.readouterr().err


def test_cross_fitted_label_logits_score_each_image_without_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 8)).astype(np.float32)
    signal = (x[:, 0] > 0).astype(np.int64)  # label 0 follows a feature; label 1 is noise
    y = np.stack([signal, rng.integers(0, 2, 100)], axis=1)
    weight, bias, cs = fit_label_heads(x[:75], y[:75], x[75:], y[75:])
    logits, folds = cross_fitted_label_logits(x, y, cs, seed=0)
    assert folds == 5 and logits.shape == y.shape

    def loss(z, t):
        return float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))

    in_sample = fit_label_heads(x, y, x[:0], y[:0], fixed=cs)
    fitted = x @ in_sample[0].T + in_sample[1]
    assert loss(logits[:, 0], y[:, 0]) < 0.5 and ((logits[:, 0] > 0) == signal).mean() > 0.9  # learned out of fold
    # noise: out of fold no better than chance (log 2), and worse than the same head scoring its own images
    assert loss(logits[:, 1], y[:, 1]) > max(0.65, loss(fitted[:, 1], y[:, 1]))
    assert cross_fitted_label_logits(x[:1], y[:1], cs) == (None, 0)


def test_label_folds_spread_a_rare_label_over_every_fold():
    rng = np.random.default_rng(1)
    y = np.stack([rng.integers(0, 2, 40), np.zeros(40, np.int64)], axis=1)
    y[rng.choice(40, 5, replace=False), 1] = 1  # a label on 5 of 40 images: one in each of 5 folds
    folds = label_folds(y, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))  # a partition of the rows
    assert [len(f) for f in folds] == [8] * 5 and [int(y[f, 1].sum()) for f in folds] == [1] * 5
    assert len(label_folds(y[:3], 3)) == 3  # one row each
