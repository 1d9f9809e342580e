"""End to end through the command line, on small folders the tests write."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.cli import build_parser, main
from headstart.evaluation.metrics import evaluate_run
from headstart.predict.run import load_run, predict_paths
from headstart.zoo import create_backbone
from tests.conftest import add_broken_files, make_class_folder

FAST = ["--image-size", "64", "--batch-size", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A linear-probe run from EfficientNet-Lite0 on a folder that also holds broken files."""
    root = tmp_path_factory.mktemp("cli")
    data = make_class_folder(root / "data", per_class=8)
    bad = add_broken_files(data / "red")
    run = root / "run"
    code = main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", *FAST])
    assert code == 0
    return root, data, run, bad


def test_train_skips_broken_files_by_name(trained_run, capsys):
    root, data, run, bad = trained_run
    skipped = json.loads((run / "skipped.json").read_text())
    assert sorted(s["path"] for s in skipped) == sorted(str(p) for p in bad)
    for name in ("config.yaml", "classes.json", "split.json", "metrics.jsonl", "best.safetensors", "last.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_acc"] >= 0.8 and summary["skipped_files"] == 3 and summary["best_phase"] == "probe"
    assert json.loads((run / "classes.json").read_text()) == ["blue", "green", "red"]


def test_predict_json_and_csv(trained_run, capsys):
    root, data, run, _ = trained_run
    assert main(["predict", str(run), str(data / "green"), "--format", "json", "--topk", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    good = [r for r in out if r.get("error") is None]
    assert len(good) == 8 and all(r["label"] == "green" for r in good)
    assert all(set(r) >= {"path", "label", "score", "topk"} and len(r["topk"]) == 2 for r in good)
    assert main(["predict", str(run), str(data / "blue" / "blue_00.png"), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,label1,score1") and ",blue," in lines[1]


def test_evaluate_json_and_confusion_matrix(trained_run, capsys):
    root, data, run, _ = trained_run
    test = make_class_folder(root / "test", per_class=4, seed=7)
    assert main(["evaluate", str(run), str(test), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["accuracy"] >= 0.8 and set(m["per_class"]) == {"red", "green", "blue"}
    assert sum(map(sum, m["confusion_matrix"])) == 12
    assert (run / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_on_unknown_class_is_a_clear_error(trained_run, tmp_path, capsys):
    _, _, run, _ = trained_run
    other = make_class_folder(tmp_path / "other", per_class=1, classes=("red", "purple"))
    assert main(["evaluate", str(run), str(other)]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "/no/such/folder", "--out", "x"], "does not exist"),
    (["train", "{data}", "--out", "{out}", "--model", "resnet5O"], "Did you mean"),
    (["predict", "/no/such/run", "a.png"], "not a headstart run"),
])
def test_wrong_use_exits_2_with_one_sentence(tmp_path, capsys, argv, message):
    data = make_class_folder(tmp_path / "d", per_class=2)
    argv = [a.format(data=data, out=tmp_path / "o") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_scratch_and_fine_tune_train_end_to_end(tmp_path):
    data = make_class_folder(tmp_path / "d", per_class=6)
    for strategy, model in (("scratch", "resnet20"), ("fine-tune", "resnet20")):
        out = tmp_path / strategy
        args = ["train", str(data), "--out", str(out), "--model", model, "--strategy", strategy, "--epochs", "2",
                "--batch-size", "4", "--workers", "0"]
        if strategy == "fine-tune":
            # resnet20 has no pretrained weights: give it a file, as a user with their own checkpoint would.
            backbone, _, _ = create_backbone("resnet20", pretrained=False)
            torch.save(backbone.state_dict(), tmp_path / "r20.pth")
            args += ["--weights", str(tmp_path / "r20.pth")]
        assert main(args) == 0
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert lines and all("val_loss" in line for line in lines)
    assert [json.loads(x)["phase"] for x in (tmp_path / "fine-tune" / "metrics.jsonl").read_text().splitlines()][0] \
        == "head"


def test_existing_run_is_not_overwritten(trained_run, capsys):
    root, data, run, _ = trained_run
    assert main(["train", str(data), "--out", str(run), *FAST]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_models_lists_offline_availability(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["available"]
    assert {"resnet18", "resnet50", "vgg16", "vgg16_bn", "efficientnet_b0", "mobilenet_v3_large"} <= set(rows)
    # size and ImageNet top-1: torchvision's own metadata for its weights (and headstart's ResNets that load them)
    assert rows["resnet50"]["imagenet_top1"] == pytest.approx(80.858) == rows["hs_resnet50"]["imagenet_top1"]
    assert rows["efficientnet_lite0"]["imagenet_top1"] < rows["efficientnet_lite2"]["imagenet_top1"]
    assert rows["efficientnet_lite0"]["params_m"] == pytest.approx(3.4, abs=0.1)
    assert rows["resnet20"]["imagenet_top1"] is None  # scratch only: no ImageNet weights


def test_loaded_run_predicts_images_in_memory_as_predict_does_on_files(trained_run):
    _, data, run, _ = trained_run
    loaded = load_run(run, device="cpu")
    paths = sorted(str(p) for p in (data / "green").iterdir() if p.suffix == ".png")[:3]
    on_disk = predict_paths(loaded, paths, topk=2, workers=0)
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    for got in (loaded.predict(pil, topk=2), loaded.predict(arrays, topk=2), loaded.predict(paths, topk=2)):
        assert [g["label"] for g in got] == [r["label"] for r in on_disk]
        for g, r in zip(got, on_disk):
            assert g["score"] == pytest.approx(r["score"], abs=1e-5) and len(g["topk"]) == 2
    one = loaded.predict(pil[0], topk=99)  # one image in, one dict out; topk clamped to the classes
    assert one["label"] == on_disk[0]["label"] and len(one["topk"]) == len(loaded.classes)
    bad = loaded.predict([np.zeros((4, 4, 7), np.uint8), "no/such.png", pil[0]])
    assert bad[0]["label"] is None and "not an image" in bad[0]["error"]
    assert bad[1]["label"] is None and "cannot be read" in bad[1]["error"]
    assert bad[2]["label"] == on_disk[0]["label"]


def test_every_option_has_help_and_every_command_ends_with_an_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        if "example" not in (p.epilog or ""):
            missing.append(f"{name}: no example")
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_a_linear_probe_run_evaluates_and_predicts_from_cached_features(trained_run, monkeypatch):
    _, data, run, _ = trained_run
    loaded = load_run(run, device="cpu")
    assert loaded.frozen_backbone
    full = load_run(run, device="cpu")
    full.frozen_backbone = False
    paths = sorted(str(p) for p in (data / "blue").iterdir() if p.suffix == ".png")
    slow, fast = predict_paths(full, paths, topk=3, workers=0), predict_paths(loaded, paths, topk=3, workers=0)
    assert [r["label"] for r in slow] == [r["label"] for r in fast]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(slow, fast))

    # The run's own images were all fitted on (train, and val after the refit): scored here on purpose.
    evaluate_run(loaded, data, workers=0, keep_leaked=True)  # fills the cache for any image train had not seen
    calls = []
    monkeypatch.setattr(loaded.model.backbone, "forward", lambda *a, **k: calls.append(1))
    again = evaluate_run(loaded, data, workers=0, keep_leaked=True)
    assert calls == [] and again["accuracy"] == evaluate_run(full, data, workers=0, keep_leaked=True)["accuracy"]


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """``headstart cache info | head -1``: the reader closes the pipe; no traceback, exit 0."""
    import os
    import subprocess
    import sys

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "key.json").write_text(json.dumps({"backbone": name}))
    env = {**os.environ, "HEADSTART_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "cache", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # closed before the command writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
