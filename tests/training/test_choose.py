"""train --choose: the backbone and size picked on train + validation images, evidence in the run, budget kept."""

from __future__ import annotations

import json

import pytest
import yaml

from headstart.cli import main
from headstart.core.errors import UsageError
from headstart.training.config import TrainConfig, parse_budget
from tests.conftest import make_class_folder


@pytest.mark.slow
def test_choose_scores_each_candidate_and_trains_the_winner(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=8, size=40)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--choose", "fast"]) == 0
    choice = json.loads((run / "backbone_choice.json").read_text())
    scored = [r for r in choice["candidates"] if "cv_loss" in r]
    assert {(r["backbone"], r["size"]) for r in scored} == {("efficientnet_lite0", 128), ("efficientnet_lite0", 224)}
    best = min(scored, key=lambda r: r["cv_loss"])  # the lowest cross-validated loss
    assert best["cv_loss_above_lowest"] == 0 and all(r["difference_se"] is not None for r in scored)
    assert choice["winner"] == {"backbone": best["backbone"], "size": best["size"]}
    assert all(r["images"] == 24 and r["folds"] >= 2 for r in scored)  # every train + val image, cross-validated
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"], config["image_size"]) == (best["backbone"], best["size"])
    assert config["choose"] is None and config["backbone_choice"]["winner"] == choice["winner"]
    assert config["preprocessing"]["image_size"] == best["size"]
    assert "backbone chosen" in (run / "report.html").read_text(encoding="utf-8")
    assert "chose efficientnet_lite0" in capsys.readouterr().err


def test_a_budget_too_short_is_said_before_any_work(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=4, size=40)
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--choose", "fast", "--budget", "0.001s"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--budget 0 s is too short" in err and "the cheapest plan" in err
    assert not (tmp_path / "run" / "backbone_choice.json").exists()


def test_budget_and_choose_options_are_checked():
    assert parse_budget("10m") == 600 and parse_budget("1h") == 3600 and parse_budget("90") == 90
    for bad in ("soon", "-5m", "0", "inf"):
        with pytest.raises(UsageError, match="--budget"):
            parse_budget(bad)
    assert TrainConfig(data="d", out="o", budget="10m").check().budget == 600  # alone: the default backbone
    with pytest.raises(UsageError, match="leave out --model and --image-size"):
        TrainConfig(data="d", out="o", choose="fast", image_size=64).check()
    with pytest.raises(UsageError, match="leave out --model and --image-size"):
        TrainConfig(data="d", out="o", choose="balanced", model="resnet50").check()
    with pytest.raises(UsageError, match="--choose must be one of"):
        TrainConfig(data="d", out="o", choose="quick").check()


def test_best_adds_every_backbone_whose_weights_are_already_here(monkeypatch):
    from headstart.training import choose

    # resnet18's file in torch's cache: headstart's own hs_resnet18 loads the same file into the same network
    here = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "hs_resnet18"}
    monkeypatch.setattr(choose, "weights_available", lambda spec: spec.name in here)
    best = {(c.backbone, c.size) for c in choose.candidates("best")}
    assert ("resnet18", 224) in best and ("resnet50", 224) not in best  # not downloaded: never fetched for a choice
    assert not any(b == "hs_resnet18" for b, _ in best)  # the same weights in the same network: scored once
    assert not any(c.backbone == "resnet18" for c in choose.candidates("balanced"))  # the offline Lites only
    assert all(c.backbone.startswith("efficientnet_lite") for c in choose.candidates("fast"))
