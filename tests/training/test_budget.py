"""train --budget: a time limit for the whole command, planned from measured speeds, kept by the loop."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from headstart.cli import main
from headstart.core.runtime import make_runtime
from headstart.training import budget as budget_mod
from headstart.training import loop
from headstart.training.budget import (
    Budget,
    TrainingClock,
    finish_seconds,
    plan_fine_tuning,
    training_throughput,
)
from headstart.training.probe import ProbeOptions
from headstart.training.strategy import make_strategy
from headstart.zoo.model import build_model
from tests.conftest import make_class_folder
from tests.training.test_recipes import tensor_loaders

RUNTIME = make_runtime("cpu", "fp32")


def test_the_epochs_that_fit_are_whole_and_capped():
    # 100 train images at 10 img/s and 50 val at 50 img/s: 11 s an epoch
    assert plan_fine_tuning(100, 100, 50, 10, 50, max_epochs=15) == (9, 11)
    assert plan_fine_tuning(100, 100, 50, 10, 50, max_epochs=4)[0] == 4
    assert plan_fine_tuning(10.9, 100, 50, 10, 50, max_epochs=4)[0] == 0
    assert plan_fine_tuning(-5, 100, 50, 10, 50, max_epochs=4)[0] == 0
    # calibration (val), test, and the report's held-out images again (at most 500), plus the slack
    assert finish_seconds(100, 900, 100) == pytest.approx((1000 + 500) / 100 + budget_mod.FINISH_SLACK_S)


def test_a_training_speed_is_measured_once_and_remembered(tmp_path):
    phase = budget_mod.fine_tune_phase()
    assert phase.train_from == 0.5  # the later half of the backbone, as the fine-tune strategy trains it
    rate = training_throughput("resnet20", 32, RUNTIME, phase, root=tmp_path, seconds=0.1)
    record = json.loads((tmp_path / "speeds.json").read_text())[0]
    assert rate > 0 and record["work"] == "train:0.5" and record["img_per_s"] == round(rate, 1)
    assert training_throughput("resnet20", 32, RUNTIME, phase, root=tmp_path) == record["img_per_s"]


def test_a_real_pass_sets_the_rate_the_next_plan_uses(tmp_path):
    from headstart.features.speed import observe, planning_rate

    assert planning_rate("resnet20", 32, RUNTIME, root=tmp_path) is None
    observe("resnet20", 32, RUNTIME, images=8, seconds=1.0, root=tmp_path)  # too few images to say anything
    assert planning_rate("resnet20", 32, RUNTIME, root=tmp_path) is None
    observe("resnet20", 32, RUNTIME, images=600, seconds=10.0, root=tmp_path)
    observe("resnet20", 32, RUNTIME, images=300, seconds=10.0, root=tmp_path)  # the machine got busier
    assert planning_rate("resnet20", 32, RUNTIME, root=tmp_path) == 30.0  # the last pass's
    records = [{"phase": "fine-tune", "train_loss": 1.0, "seconds": 4.0}, {"phase": "head", "seconds": 1.0},
               {"phase": "fine-tune", "train_loss": 0.9, "seconds": 6.0}]
    budget_mod.observe_epochs(records, "resnet20", 32, RUNTIME, 100, [budget_mod.fine_tune_phase()])
    # (the session's feature cache: conftest points HEADSTART_CACHE at a temporary folder)
    assert planning_rate("resnet20", 32, RUNTIME, work="train:0.5:epoch") == 20.0  # 200 images in 10 s


def _fit_epochs(budget) -> loop.FitState:
    model = build_model("resnet20", 3, pretrained=False)
    strategy = make_strategy("fine-tune", epochs=3, groups=len(model.group_names))
    return loop.fit(model, strategy, tensor_loaders(), RUNTIME, patience=0, probe=ProbeOptions(), budget=budget)


def test_the_loop_starts_no_epoch_the_budget_has_no_room_for():
    ample = _fit_epochs(TrainingClock(Budget(3600), epoch_s=1, finish_s=10))
    assert ample.global_epoch == 1 + 3 and ample.stopped_by_budget is None  # the head, then 3 epochs
    late = _fit_epochs(TrainingClock(Budget(10), epoch_s=1, finish_s=10))  # the finish alone fills it
    assert late.global_epoch == 1 + 1 and late.stopped_by_budget == "fine-tune"  # the planned first epoch runs


def test_an_epoch_slower_than_planned_scales_the_finish_too():
    clock = TrainingClock(Budget(100), epoch_s=10, finish_s=30)
    assert clock(10)  # 10 + 30 <= ~100
    assert not clock(30)  # three times slower than planned: 30 + 3 x 30 > 100


@pytest.fixture
def speeds(monkeypatch):
    """Speeds set by the test (img/s): the plan is then arithmetic, whatever this machine does."""
    rates = {"eval": 1000.0, "train": 100.0}
    monkeypatch.setattr(budget_mod, "rate_to_plan", lambda *a, **k: rates["eval"])
    monkeypatch.setattr(budget_mod, "training_throughput", lambda *a, **k: rates["train"])
    monkeypatch.setattr(budget_mod, "planning_rate", lambda *a, **k: None)  # no real pass seen before
    monkeypatch.setattr("headstart.cli.train.process_started", time.monotonic)
    return rates


@pytest.mark.slow
def test_the_rest_of_the_budget_fine_tunes_and_validation_picks_what_ships(tmp_path, speeds, capsys):
    data = make_class_folder(tmp_path / "data", per_class=8, size=40)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--image-size", "64", "--epochs", "2", "--budget", "1h",
                 "--no-report"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    plan = config["budget_plan"]
    assert config["strategy_resolved"] == plan["strategy"] == "fine-tune" and plan["epochs"] == 2  # --epochs caps
    assert plan["train_img_per_s"] == 100 and "clock" not in plan
    phases = [json.loads(line)["phase"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["head", "fine-tune", "fine-tune"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"]["within"] and summary["budget"]["stopped_by_budget"] is None
    assert summary["best_phase"] in summary["budget"]["shipped"]
    assert "budget 3600 s" in capsys.readouterr().err

    speeds["train"] = 0.01  # one epoch would take hours: the probe alone
    assert main(["train", str(data), "--out", str(run), "--image-size", "64", "--budget", "5m", "--overwrite",
                 "--no-report"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["strategy_resolved"] == "linear-probe" and "the linear probe alone" in config["budget_plan"]["reason"]


def test_a_budget_too_short_for_the_cheapest_plan_is_refused_before_training(tmp_path, speeds, capsys, monkeypatch):
    monkeypatch.setattr(budget_mod, "rate_to_plan", lambda model, size, runtime: 1.0 if size == 224 else 2.0)
    data = make_class_folder(tmp_path / "data", per_class=8, size=40)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--budget", "10s"]) == 2
    err = capsys.readouterr().err
    assert "--budget 10 s is too short: the cheapest plan (efficientnet_lite0 at 224 px" in err
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--budget", "10s", "--choose", "fast"]) == 2
    assert "the cheapest plan (efficientnet_lite0 at 128 px" in capsys.readouterr().err  # the faster candidate
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_a_multi_label_run_is_planned_and_kept_within_its_budget(tmp_path, speeds, capsys):
    from headstart.data.mosaic import make_mosaic_set

    manifest = make_mosaic_set(tmp_path / "data", train=60, test=20, classes=3, seed=0, split_column=True)
    run = tmp_path / "run"
    assert main(["train", str(manifest), "--out", str(run), "--image-size", "32", "--epochs", "1", "--budget", "1h",
                 "--workers", "0", "--no-report"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "multilabel" and config["budget_plan"]["strategy"] == "fine-tune"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"]["within"] and summary["best_phase"] in summary["budget"]["shipped"]
    assert summary["test_map"] > 0.3 and "budget 3600 s" in capsys.readouterr().err

    speeds["eval"] = 0.5  # features alone would take minutes: refused before training, in one sentence
    assert main(["train", str(manifest), "--out", str(tmp_path / "short"), "--budget", "10s"]) == 2
    assert "--budget 10 s is too short" in capsys.readouterr().err
    assert not (tmp_path / "short" / "config.yaml").exists()


def test_the_budget_counts_from_when_it_started():
    b = Budget(60, started=time.monotonic() - 45)
    assert 14 < b.left() <= 15 and 45 <= b.spent() < 46 and b.deadline == pytest.approx(b.started + 60)
