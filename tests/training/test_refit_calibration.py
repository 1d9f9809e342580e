"""Calibration that describes the shipped weights: the temperature of a refitted head is cross-fitted, not T = 1,
and model selection falls back to the raw validation loss when every validation image is right."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headstart.core.io import weights_metadata
from headstart.core.runtime import make_runtime
from headstart.predict.calibration import (
    T_MAX,
    T_MIN,
    expected_calibration_error,
    fit_temperature,
    run_temperature,
    selection_loss,
    softmax,
)
from headstart.training import probe as probe_module
from headstart.training.heads import cross_fitted_logits, refit_head
from headstart.training.loop import evaluate
from headstart.training.train import TrainConfig, train
from tests.conftest import as_two_ranks, make_class_folder


def _blobs(per_class: int, rng, centres):
    y = np.repeat(np.arange(len(centres)), per_class)
    return (centres[y] + rng.normal(size=(len(y), centres.shape[1]))).astype(np.float32), y


@pytest.fixture(scope="module")
def features():
    """Three overlapping classes of 32-d features: 20 labelled per class, 300 held out per class."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 0.5
    return _blobs(20, rng, centres), _blobs(300, rng, centres)


# ncm with a tiny temperature is over-confident; sgd (label smoothing, mixup, zero start, few epochs) under-confident.
@pytest.mark.parametrize("kind, chosen, sharper", [("ncm", {"temperature": 0.1}, False),
                                                   ("sgd", {"best_head_epoch": 30}, True)])
def test_cross_fitted_temperature_calibrates_the_refitted_head(features, kind, chosen, sharper):
    (x, y), (x_test, y_test) = features
    head = refit_head(kind, x, y, 3, chosen)
    oof, folds = cross_fitted_logits(kind, x, y, 3, chosen)
    assert folds == 5 and oof.shape == (len(y), 3)
    t = run_temperature(oof, y)
    assert T_MIN < t < T_MAX and (t < 0.7 if sharper else t > 1.5)
    # It carries over to images none of the heads saw: held-out ECE falls well below the head's own (T = 1).
    logits = head.logits(x_test)
    assert expected_calibration_error(softmax(logits, t), y_test) < 0.5 * expected_calibration_error(
        softmax(logits), y_test)
    assert t == pytest.approx(fit_temperature(logits, y_test)[0], rel=0.35)


def test_cross_fitting_needs_two_images_of_every_class(features):
    (x, y), _ = features
    assert cross_fitted_logits("logreg", x[:41], y[:41], 3, {"C": 1.0}) == (None, 0)  # class 2 has one image
    assert cross_fitted_logits("logreg", x[:42], y[:42], 3, {"C": 1.0})[1] == 2  # two folds, not five


def test_refit_ships_the_cross_fitted_temperature(features, monkeypatch):
    """``ProbeOptions.refit`` (what ``train`` calls) returns the temperature of the out-of-fold logits."""
    (x, y), _ = features
    parts = iter([(x[::2], y[::2], 0), (x[1::2], y[1::2], 0)])  # "train" and "val" features, as the cache gives
    monkeypatch.setattr(probe_module, "_feature_source", lambda *args: next(parts))
    model = SimpleNamespace(num_classes=3, head=nn.Linear(32, 3))
    info = probe_module.ProbeOptions("sgd").refit(model, [None, None], None, {"best_head_epoch": 30})
    oof, _ = cross_fitted_logits("sgd", np.concatenate([x[::2], x[1::2]]), np.concatenate([y[::2], y[1::2]]), 3,
                                 {"best_head_epoch": 30})
    assert info["temperature"] == run_temperature(oof, np.concatenate([y[::2], y[1::2]])) != 1.0
    assert info["temperature_source"].startswith("cross-fitted: 5-fold") and info["cross_fit_folds"] == 5
    assert info["calibration"]["images"] == len(y) and info["calibration"]["temperature"] == info["temperature"]
    assert "out of fold" in info["calibration"]["describes"]


def _hard_folder(root, size: int = 32):
    """train/val/test folders of three classes of grey images a shade apart under noise: a probe gets some wrong."""
    rng = np.random.default_rng(3)
    for split, per_class in (("train", 14), ("val", 6), ("test", 10)):
        for name, level in (("dark", 100), ("mid", 128), ("light", 156)):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                img = level + rng.normal(0, 30, size=(size, size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / split / name / f"{name}_{i:02d}.png")
    return root


@pytest.mark.slow
def test_a_refitted_sgd_run_ships_its_cross_fitted_temperature_and_labels_every_row(tmp_path):
    data = _hard_folder(tmp_path / "data")
    run = tmp_path / "run"
    summary = train(TrainConfig(data=str(data), out=str(run), strategy="linear-probe", head="sgd", image_size=32,
                                workers=0))
    cal = summary["calibration"]
    assert summary["refit"] and summary["temperature"] != 1.0
    assert summary["temperature"] == cal["cross_fitted"]["temperature"]
    assert weights_metadata(run / "best.safetensors")["temperature"] == summary["temperature"]
    assert summary["temperature_source"].startswith("cross-fitted")
    assert cal["cross_fitted"]["images"] == summary["train_images"] + summary["val_images"]
    assert cal["val"]["describes"].startswith("validation images: the head before the refit") \
        and cal["val"]["describes"].endswith("not shipped")
    assert json.loads((run / "summary.json").read_text())["temperature_source"] == summary["temperature_source"]
    html = (run / "report.html").read_text(encoding="utf-8")
    calibration = html[html.index('<section id="calibration">'):]
    for label in ("validation images, the head before the refit", "train + validation images out of fold",
                  "test images, the shipped weights", f"Shipped: T = {summary['temperature']:.3g}, cross-fitted"):
        assert label in calibration, label


# -- selection when every validation image is right -------------------------------------------------------------

def test_selection_uses_the_raw_loss_when_every_image_is_right():
    logits, labels = torch.tensor([[0.4, 0.0], [0.0, 0.3], [0.2, 0.0]]), torch.tensor([0, 1, 0])
    raw = torch.nn.functional.cross_entropy(logits, labels).item()
    assert fit_temperature(logits, labels)[0] == pytest.approx(T_MIN)  # what selection ranked on before
    assert selection_loss(logits, labels) == (1.0, pytest.approx(raw), True)
    # One image wrong: the calibrated figure, as before.
    wrong = torch.tensor([1, 1, 0])
    t, loss = fit_temperature(logits, wrong)
    assert selection_loss(logits, wrong) == (t, loss, False)


@pytest.mark.parametrize("labels", [([0, 1], [0, 1]), ([0, 1], [1, 1])], ids=["all-right", "one-rank-wrong"])
def test_selection_branch_is_decided_over_all_ranks(labels):
    """Under DDP one rank's shard may be all right while another's is not: every rank takes the branch of the whole
    set. Two threads stand in for two ranks, exchanging their sums through a barrier (as in test_calibration)."""
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.8, 0.0], [0.0, 2.0]])
    shards = [(logits[2 * i:2 * i + 2], torch.tensor(labels[i])) for i in range(2)]
    whole = selection_loss(logits, torch.tensor(labels[0] + labels[1]))
    results = as_two_ranks(selection_loss, shards)
    assert results[0] == results[1]
    assert results[0][2] is whole[2] and results[0][0] == pytest.approx(whole[0], rel=1e-9)
    assert results[0][1] == pytest.approx(whole[1], rel=1e-9)


def test_evaluate_ranks_an_all_right_epoch_on_its_raw_loss():
    """The training loop's validation figure (``evaluate``): raw loss and T = 1 when every image is right."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(2) * 0.1)
        linear.bias.zero_()
    model = nn.Sequential(nn.Flatten(), linear)
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0]])[:, :, None, None]  # (n, channels, 1, 1)
    y = torch.tensor([0, 1, 0, 1])
    val = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=2), make_runtime("cpu", "fp32"))
    assert val["all_correct"] and val["temperature"] == 1.0
    assert val["loss_calibrated"] == pytest.approx(val["loss"]) and val["loss"] > 0.3  # small margins: a high loss
    y_wrong = torch.tensor([0, 1, 0, 0])
    val = evaluate(model, DataLoader(TensorDataset(x, y_wrong), batch_size=2), make_runtime("cpu", "fp32"))
    assert not val["all_correct"] and val["loss_calibrated"] < val["loss"]


def test_a_probe_with_every_validation_image_right_is_scored_on_its_raw_loss(monkeypatch):
    rng = np.random.default_rng(1)
    centres = np.eye(3, 16) * 8
    (x_tr, y_tr), (x_val, y_val) = _blobs(10, rng, centres), _blobs(4, rng, centres)
    parts = iter([(x_tr, y_tr, 0), (x_val, y_val, 0)])
    monkeypatch.setattr(probe_module, "_feature_source", lambda *args: next(parts))
    model = SimpleNamespace(num_classes=3, head=nn.Linear(16, 3))
    info = probe_module.ProbeOptions("logreg")(model, None, None, None)
    assert info["probe_val_acc"] == 1.0 and info["probe_val_all_correct"] is True
    assert info["probe_temperature"] == 1.0
    assert info["probe_val_loss_calibrated"] == pytest.approx(info["probe_val_loss"])


@pytest.mark.slow
def test_an_all_right_run_says_it_ranked_on_the_raw_loss(tmp_path, capfd):
    data = make_class_folder(tmp_path / "data", per_class=8, size=32)
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), strategy="linear-probe", image_size=32,
                                workers=0, report=False))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert summary["val_acc"] == 1.0 and record["val_all_correct"] is True
    assert record["val_loss_calibrated"] == pytest.approx(record["val_loss"]) and record["val_temperature"] == 1.0
    assert "ranked on its raw validation loss" in capfd.readouterr().err


def test_readme_prints_the_stored_refit_calibration_figures():
    """The README's test ECE of the refitted head (T = 1 → cross-fitted T) is the stored measurement's mean."""
    root = Path(__file__).resolve().parents[2]
    rows = json.loads((root / "docs/measurements/refit_calibration_160px.json").read_text())["rows"]
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    for kind in ("logreg", "ncm", "sgd"):
        pairs = []
        for n in (5, 10, 50):
            rs = [r for r in rows if r["head"] == kind and r["labels_per_class"] == n]
            means = [np.mean([r[k] for r in rs]) for k in ("ece_after_t1", "ece_after_t_cross")]
            pairs.append(" → ".join(f"{m:.3f}" for m in means))
        assert f"{kind} {', '.join(pairs)}" in readme, (kind, pairs)
