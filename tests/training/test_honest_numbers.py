"""What a run reports and ships: leak-proof splits, the probe refitted on every label, calibrated scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

from headstart.core.io import weights_metadata
from headstart.data.images import load_image
from headstart.data.transforms import eval_transform
from headstart.evaluation.metrics import classification_metrics, evaluate_run, plot_confusion
from headstart.predict.run import expand_paths, load_run, predict_paths, view_logits
from headstart.training.heads import ABSENT, fit_head, refit_head
from headstart.training.train import TrainConfig, tiny_last_batch, train
from tests.conftest import make_class_folder


def test_refit_uses_every_label_with_the_chosen_setting():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(3, 16))
    x_train = np.concatenate([centres[c] + rng.normal(size=(10, 16)) for c in (0, 1)])  # class 2: no train image
    y_train = np.repeat([0, 1], 10)
    x_val = np.concatenate([centres[c] + rng.normal(size=(5, 16)) for c in (0, 1, 2)])
    y_val = np.repeat([0, 1, 2], 5)
    first = fit_head("logreg", x_train, y_train, x_val, y_val, 3)
    assert first.bias[2] == ABSENT  # never predicted before the refit
    refit = refit_head("logreg", np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), 3, first.info)
    assert refit.info["C"] == first.info["C"] and refit.info["refit_images"] == 35
    assert refit.bias[2] != ABSENT
    probe = centres[2] + rng.normal(size=(20, 16))
    assert (refit.logits(probe).argmax(1) == 2).mean() > 0.8


def test_tiny_last_batch():
    assert tiny_last_batch(36, 32)  # 4 images: dropped while BatchNorm learns
    assert not tiny_last_batch(50, 32)  # 18: kept
    assert not tiny_last_batch(64, 32) and not tiny_last_batch(20, 32)  # none left over; the only batch


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    data = make_class_folder(root / "data", per_class=10, size=32)
    summary = train(TrainConfig(data=str(data), out=str(root / "run"), strategy="linear-probe", image_size=32))
    return root, data, summary


def test_linear_probe_run_ships_refit_head_and_temperature(probe_run):
    root, data, summary = probe_run
    run = root / "run"
    assert summary["refit"]["refit_images"] == summary["train_images"] + summary["val_images"] == 30
    meta = weights_metadata(run / "best.safetensors")
    # A refitted head has seen the validation images, which cannot calibrate it any more: its temperature is
    # cross-fitted on train + validation (tests/training/test_refit_calibration.py) and described as such.
    assert meta["refit"] is True and meta["temperature"] == summary["temperature"]
    assert summary["temperature"] == summary["calibration"]["cross_fitted"]["temperature"]
    assert summary["temperature_source"].startswith("cross-fitted")
    cal = summary["calibration"]["val"]
    assert {"ece_before", "ece_after", "reliability_before", "reliability_after"} <= set(cal)
    assert sum(cal["reliability_after"]["count"]) == summary["val_images"]
    assert set(summary["phases"]["probe"]) >= {"val_loss", "val_loss_calibrated", "val_acc"}
    assert summary["phases"]["probe"]["val_loss_calibrated"] <= summary["phases"]["probe"]["val_loss"] + 1e-12
    assert summary["trainable_params"] == 3 * (1280 + 1)  # the shipped weights' trainable part: the head


def test_predict_uses_the_run_temperature(probe_run):
    root, data, _ = probe_run
    # fp32 on every machine: under bf16 autocast (CPUs with native bf16) the folded backbone behind the cached
    # features and the unfolded one below round differently, by up to ~0.04 here; in fp32 they agree to ~1e-6.
    loaded = load_run(root / "run", precision="fp32")
    loaded.temperature = 2.0  # any fitted value: predictions must be softmax(logits / T)
    paths = expand_paths([data / "red"])[:4]
    scores = [r["score"] for r in predict_paths(loaded, paths, topk=1)]

    images = torch.stack([eval_transform(loaded.preprocessing)(load_image(p)) for p in paths])
    expected = (view_logits(loaded.model, images, loaded.runtime)[0] / 2.0).softmax(1).max(1).values
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)


def test_evaluate_leaves_out_copies_of_training_images(probe_run, tmp_path):
    root, data, _ = probe_run
    split = json.loads((root / "run" / "split.json").read_text())
    folder = make_class_folder(tmp_path / "eval", per_class=3, size=32, seed=7)
    train_image = Path(split["train"][0][0])
    shutil.copy(train_image, folder / split["train"][0][1] / "copy_of_a_training_image.png")
    loaded = load_run(root / "run")
    m = evaluate_run(loaded, folder)
    assert m["leaked_excluded"] == 1 and m["num_images"] == 9
    assert m["leaked"] == [str(folder / split["train"][0][1] / "copy_of_a_training_image.png")]
    assert m["calibration"]["images"] == 9
    kept = evaluate_run(loaded, folder, keep_leaked=True)
    assert kept["leaked_excluded"] == 0 and kept["leaked_kept"] == 1 and kept["num_images"] == 10
    saved = json.loads((root / "run" / "evaluation.json").read_text())
    assert saved["leaked_kept"] == 1


@pytest.mark.slow
def test_given_splits_leave_out_validation_copies_of_training_images(tmp_path):
    data = tmp_path / "data"
    make_class_folder(data / "train", per_class=8, size=32)
    make_class_folder(data / "val", per_class=3, size=32, seed=1)
    make_class_folder(data / "test", per_class=3, size=32, seed=2)
    shutil.copy(data / "train" / "red" / "red_00.png", data / "val" / "red" / "leaked.png")
    shutil.copy(data / "train" / "blue" / "blue_01.png", data / "test" / "blue" / "leaked.png")
    s = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), strategy="linear-probe", image_size=32))
    assert s["leakage"]["excluded_val"] == 1 and s["leakage"]["excluded_test"] == 1
    assert s["val_images"] == 9
    record = json.loads((tmp_path / "run" / "leakage.json").read_text())
    assert record["excluded"]["val"] == [str(data / "val" / "red" / "leaked.png")]
    kept = train(TrainConfig(data=str(data), out=str(tmp_path / "run2"), strategy="linear-probe", image_size=32,
                             keep_leaked=True))
    assert kept["leakage"]["excluded_val"] == 0 and kept["val_images"] == 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_are_scikit_learns(seed, tmp_path):
    """classification_metrics computes in numpy what scikit-learn defines (sklearn is not imported by evaluate)."""
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d", "never"]  # 'never' is neither true nor predicted: zero_division=0
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    y_pred[:30] = y_true[:30]
    y_true[y_true == 3] = 2  # class d is predicted but never true
    m = classification_metrics(y_true, y_pred, classes)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    for i, c in enumerate(classes):
        assert m["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    assert m["accuracy"] == pytest.approx((y_true == y_pred).mean())
    plot_confusion(m, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
