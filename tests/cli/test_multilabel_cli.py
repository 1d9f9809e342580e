"""Multi-label classification through every command, on 2x2 mosaics of real Fashion-MNIST pictures."""

from __future__ import annotations

import csv
import io
import json

import pytest

from headstart.cli import main
from headstart.data.mosaic import make_mosaic_set

FAST = ["--image-size", "32", "--batch-size", "16", "--workers", "0"]


@pytest.fixture(scope="module")
def mosaic_run(tmp_path_factory):
    """A linear-probe run on 90 mosaics of 4 garments (30 more are its test split)."""
    root = tmp_path_factory.mktemp("multilabel")
    manifest = make_mosaic_set(root / "data", train=90, test=30, classes=4, seed=0, split_column=True)
    run = root / "run"
    assert main(["train", str(manifest), "--out", str(run), "--strategy", "linear-probe", *FAST]) == 0
    return manifest, run


def test_train_records_the_task_thresholds_and_test_figures(mosaic_run):
    manifest, run = mosaic_run
    config = (run / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "task: multilabel" in config and summary["task"] == "multilabel"
    decision = summary["decision"]
    assert len(decision["thresholds"]) == len(decision["temperatures"]) == 4
    assert "F1-optimal" in decision["threshold_source"]
    assert summary["test_map"] > 0.5  # 4 labels, chance is about their frequency (~0.4)
    split = json.loads((run / "split.json").read_text())
    assert split["task"] == "multilabel"
    assert {name for _, names in split["val"] for name in names} == set(split["classes"])
    assert (run / "report.html").read_text().count("Precision-recall curves") >= 1


def test_predict_gives_each_image_its_labels_and_scores(mosaic_run, capsys):
    manifest, run = mosaic_run
    images = sorted((manifest.parent / "images").glob("t*.png"))[:3]
    capsys.readouterr()
    assert main(["predict", str(run), *map(str, images), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    thresholds = json.loads((run / "summary.json").read_text())["decision"]["thresholds"]
    labels = json.loads((run / "classes.json").read_text())
    for r in records:
        assert isinstance(r["labels"], list) and len(r["scores"]) == len(r["labels"])
        assert all(r["all_scores"][name] >= thresholds[labels.index(name)] for name in r["labels"])
    assert main(["predict", str(run), str(images[0]), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["path", "labels", "scores"] and len(rows) == 2


def test_evaluate_json_carries_the_macro_map(mosaic_run, capsys):
    manifest, run = mosaic_run
    capsys.readouterr()
    assert main(["evaluate", str(run), str(manifest), "--json", "--no-report"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert 0 < m["map"] <= 1 and 0 <= m["hamming_loss"] <= 1 and m["task"] == "multilabel"
    # its training images are what the head was fitted on (no refit): left out; validation and test are scored
    assert m["leaked_excluded"] == json.loads((run / "summary.json").read_text())["train_images"]
    assert set(m["per_class"]) == set(json.loads((run / "classes.json").read_text()))


def test_serve_answers_with_the_label_set(mosaic_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from headstart.serve import create_app, load_model

    manifest, run = mosaic_run
    image = sorted((manifest.parent / "images").glob("t*.png"))[0]
    with TestClient(create_app(load_model(run, device="cpu"))) as client:
        answer = client.post("/predict", files=[("files", (image.name, image.read_bytes()))]).json()
        info = client.get("/info").json()
    assert isinstance(answer["predictions"][0]["labels"], list)
    assert info["task"] == "multilabel" and len(info["thresholds"]) == 4


def test_single_label_options_are_refused_in_one_sentence(mosaic_run, tmp_path, capsys):
    manifest, _ = mosaic_run
    assert main(["train", str(manifest), "--out", str(tmp_path / "r"), "--mixup", "0.2", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--mixup is for single-label data" in err


def test_check_names_each_bad_row(mosaic_run, tmp_path, capsys):
    manifest, _ = mosaic_run
    rows = list(csv.reader(open(manifest)))
    bad = tmp_path / "bad.csv"
    folder = manifest.parent
    with open(bad, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows([[str(folder / p), ys] for p, ys, _ in rows[1:30]])
        w.writerow([str(folder / "images" / "gone.png"), "coat"])
        w.writerow([str(folder / rows[31][0]), ""])
    capsys.readouterr()
    assert main(["check", str(bad), "--json", "--duplicates", "exact"]) == 1
    issues = {i["kind"]: i["message"] for i in json.loads(capsys.readouterr().out)["issues"]}
    assert "gone.png does not exist" in issues["bad-row"] and "has no label" in issues["no-label"]


@pytest.mark.slow
def test_export_carries_the_decision_and_onnx_gives_the_same_labels(mosaic_run, capsys):
    manifest, run = mosaic_run
    assert main(["export", str(run), "--max-images", "32"]) == 0
    images = [str(p) for p in sorted((manifest.parent / "images").glob("t*.png"))[:8]]
    capsys.readouterr()
    assert main(["predict", str(run / "model.onnx"), *images, "--format", "json"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    from headstart.predict import open_predictor

    # the run's network in fp32, as the export was checked against (tta=True opens the network, not the cache)
    mine = open_predictor(run, device="cpu", precision="fp32", tta=True).predict_paths(images)
    assert [r["labels"] for r in onnx] == [r["labels"] for r in mine]
    import onnx as onnx_lib  # noqa: I001 (only this slow test needs it)

    props = {p.key: p.value for p in onnx_lib.load(str(run / "model.onnx")).metadata_props}
    assert props["headstart.task"] == "multilabel"
    assert len(json.loads(props["headstart.decision"])["thresholds"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("strategy,phases", [("fine-tune", {"head", "fine-tune"}), ("lp-ft", {"probe", "ft"}),
                                             ("full", {"full"})])
def test_every_strategy_trains_the_network_with_the_same_machinery(mosaic_run, tmp_path, strategy, phases):
    manifest, _ = mosaic_run
    run = tmp_path / strategy
    assert main(["train", str(manifest), "--out", str(run), "--strategy", strategy, "--epochs", "1",
                 "--no-report", *FAST]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["phases"]) == phases and summary["test_map"] > 0.4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in records)  # a gradient-descent epoch ran, with BCE
