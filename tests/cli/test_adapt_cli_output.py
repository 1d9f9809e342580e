"""Honest numbers from the command line: `adapt` finds an old run's training images from any folder and never falls
back to classic AdaBN unasked, and uses every target image; `predict` and `evaluate` print only data on stdout and
say on stderr what failed; `lr-find` prints the rate it computed."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from headstart.cli import main
from headstart.core.runtime import make_runtime
from headstart.training import lr_finder
from headstart.training.adapt import adapt_batchnorm, statistics_are_training_images, training_images
from headstart.training.lr_finder import LRFinderResult, _suggestions
from headstart.zoo import create_backbone
from tests.conftest import add_broken_files, make_class_folder

FAST = ["--model", "resnet20", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet20 linear probe (frozen BatchNorm: its statistics are the 'pretrained' ones, not its images')."""
    root = tmp_path_factory.mktemp("adapt-cli")
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    torch.save(backbone.state_dict(), root / "r20.pth")
    data = make_class_folder(root / "data", per_class=6)
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), *FAST, "--weights", str(root / "r20.pth"), "--strategy",
                 "linear-probe"]) == 0
    target = make_class_folder(root / "target", per_class=3, seed=3)  # 9 images
    return root, data, run, target


def old_project(trained, where):
    """The run as `headstart train data --out runs/r` left it in `where` before split.json held absolute paths:
    training paths relative to the folder train ran in, and so are the config's data and out."""
    root, data, run, _ = trained
    shutil.copytree(data, where / "data")
    shutil.copytree(run, where / "runs" / "r")
    split_file = where / "runs" / "r" / "split.json"
    split = json.loads(split_file.read_text())
    for name in ("train", "val", "test"):
        split[name] = [[str(Path("data") / Path(p).relative_to(data)), y] for p, y in split[name]]
    split_file.write_text(json.dumps(split))
    config_file = where / "runs" / "r" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**config, "data": "data", "out": "runs/r"}, sort_keys=False))
    return where / "runs" / "r", len(split["train"])


# adapt: the training images, from anywhere -------------------------------------------------------------------------

@pytest.mark.parametrize("moved", [False, True])
def test_adapt_finds_an_old_runs_relative_training_images_from_any_folder(trained, tmp_path, monkeypatch, capsys,
                                                                         moved):
    run, n_train = old_project(trained, tmp_path / "project")
    assert json.loads((run / "split.json").read_text())["train"][0][0].startswith("data/")
    if moved:  # the whole project moved: the folder train ran in is found from the run's place and its `out`
        shutil.move(tmp_path / "project", tmp_path / "elsewhere-project")
        run = tmp_path / "elsewhere-project" / "runs" / "r"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert len(training_images(run)) == n_train
    target = trained[3]
    assert main(["adapt", str(run), str(target), "--out", str(tmp_path / "a"), "--batch-size", "4", "--workers",
                 "0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "aligned" and info["source"].startswith(f"{n_train} of the run's training images")


def test_adapt_without_the_training_images_says_what_to_do_and_falls_back_to_nothing(trained, tmp_path, capsys):
    run, _ = old_project(trained, tmp_path / "project")
    shutil.move(tmp_path / "project" / "data", tmp_path / "moved-data")
    target, out = trained[3], tmp_path / "a"
    assert main(["adapt", str(run), str(target), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--source DIR" in err and "--method classic" in err and "training images'" in err
    assert not (out / "config.yaml").exists()
    assert main(["adapt", str(run), str(target), "--out", str(out), "--method", "aligned", "--workers", "0"]) == 2
    assert "--source DIR" in capsys.readouterr().err

    assert main(["adapt", str(run), str(target), "--out", str(out), "--source", str(tmp_path / "moved-data"),
                 "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "aligned"
    assert main(["adapt", str(run), str(target), "--out", str(tmp_path / "c"), "--method", "classic", "--workers",
                 "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["method"] == "classic"  # asked for, and warned about: frozen statistics
    assert captured.err.startswith("warning: ") and "--source DIR" in captured.err


def test_auto_takes_classic_adabn_only_when_the_statistics_are_the_training_images(trained, tmp_path, capsys):
    run, _ = old_project(trained, tmp_path / "project")
    shutil.rmtree(tmp_path / "project" / "data")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["strategy_phases"][0]["bn"] = "adabn"  # recomputed on the training images before training
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["adapt", str(run), str(trained[3]), "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["method"] == "classic" and "warning" not in captured.err
    assert main(["adapt", str(run), str(trained[3]), "--out", str(tmp_path / "b"), "--method", "aligned"]) == 2
    assert "--method classic, which suits this run" in capsys.readouterr().err


@pytest.mark.parametrize("bn, train_from, theirs", [("frozen", 0, False), ("train", 0, True), ("train", -2, False),
                                                   ("train", -5, True), ("adabn", -1, True)])
def test_which_runs_hold_their_training_images_statistics(bn, train_from, theirs):
    phases = [{"name": "head", "bn": "frozen", "train_from": -1}, {"name": "x", "bn": bn, "train_from": train_from}]
    assert statistics_are_training_images({"strategy_phases": phases}, num_groups=5) is theirs  # -5: all 5 groups


# adapt: every target image ------------------------------------------------------------------------------------------

def test_adapt_uses_every_target_image(trained, tmp_path, capsys):
    _, _, run, target = trained
    assert main(["adapt", str(run), str(target), "--out", str(tmp_path / "a"), "--batch-size", "4", "--workers",
                 "0"]) == 0  # 9 images: batches of 4, 4 and 1
    assert json.loads(capsys.readouterr().out)["images"] == 9
    assert (tmp_path / "a" / "train_fingerprints.json").read_text() == (run / "train_fingerprints.json").read_text()
    assert main(["adapt", str(run), str(target), "--out", str(tmp_path / "b"), "--batch-size", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_a_last_batch_of_one_image_is_normalised_with_the_pooled_statistics():
    """1x1 feature maps, as a small image has at the end of a network: one image's own variance is zero, and
    normalised by its own statistics it would reach the next layer as the constant beta. Normalised with the pooled
    statistics, it reaches it as it will at inference."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                torch.nn.Conv2d(6, 5, 1), torch.nn.BatchNorm2d(5))
    x = torch.randn(9, 4, 1, 1) * 3 + 1
    seen_by_second = []
    hook = model[4].register_forward_pre_hook(lambda m, args: seen_by_second.append(args[0].clone()))
    assert adapt_batchnorm(model, [DataLoader(TensorDataset(x, torch.zeros(9)), batch_size=4)],
                           make_runtime("cpu", "fp32")) == 9
    hook.remove()
    with torch.no_grad():
        first_in = model[0](x)
        expected = model[3](model[2](model[1](first_in[8:])))  # the adapted first layer, as at inference
    torch.testing.assert_close(model[1].running_mean, first_in.mean((0, 2, 3)))  # all 9 images pooled
    torch.testing.assert_close(model[1].running_var, first_in.var((0, 2, 3), unbiased=False))
    torch.testing.assert_close(seen_by_second[-1], expected)
    assert seen_by_second[-1].std() > 0.1  # not the constant its own statistics would have made it
    assert torch.isfinite(model[4].running_var).all()


# predict and evaluate: stdout is data ------------------------------------------------------------------------------

def test_predict_prints_only_data_and_fails_when_some_inputs_fail(trained, tmp_path, capsys):
    _, data, run, _ = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(data / "green", mixed)
    broken = sorted(str(p) for p in add_broken_files(mixed))
    capsys.readouterr()
    assert main(["predict", str(run), str(mixed), "--format", "json"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)  # the whole of stdout is the JSON array
    assert len(rows) == 9 and sorted(r["path"] for r in rows if r.get("error")) == broken
    assert all(r["label"] for r in rows if not r.get("error"))
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("headstart predict: 3 of 9 images could not be predicted: ")
    assert all(p in last for p in broken)

    assert main(["predict", str(run), str(mixed), "--format", "csv", "--topk", "2"]) == 1
    captured = capsys.readouterr()
    table = list(csv.reader(io.StringIO(captured.out)))
    assert table[0] == ["path", "label1", "score1", "label2", "score2", "error"]
    assert len(table) == 10 and all(len(row) == 6 for row in table)
    assert sorted(row[0] for row in table[1:] if row[5]) == broken
    assert "3 of 9" in captured.err

    assert main(["predict", str(run), str(data / "green"), "--format", "json"]) == 0  # all good: 0
    assert len(json.loads(capsys.readouterr().out)) == 6


def test_evaluate_json_is_only_data_and_skipped_files_go_to_stderr(trained, tmp_path, capsys):
    _, _, run, _ = trained
    test = make_class_folder(tmp_path / "test", per_class=2, seed=11)
    broken = add_broken_files(test / "red")
    capsys.readouterr()
    assert main(["evaluate", str(run), str(test), "--json"]) == 0
    captured = capsys.readouterr()
    m = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert m["num_images"] == 6 and len(m["skipped"]) == 3
    assert all(f"skipping {p}" in captured.err for p in broken)


# lr-find: the printed rate is the computed one -----------------------------------------------------------------------

def synthetic_sweep():
    """A loss with a known shape in x = log10(lr): a dip symmetric about 1e-2 (so a centred average keeps its
    minimum there), falling steepest at 1e-3 (its inflection), and exploding from 3e-1."""
    lrs = np.geomspace(1e-6, 1, 121)  # 20 steps a decade: 1e-3 and 1e-2 are on the grid
    x = np.log10(lrs)
    losses = 2 - np.exp(-(x + 2) ** 2 / 2) + 5 * np.clip(x + 0.5, 0, None) ** 2
    avg, smoothed = 0.0, []
    for step, v in enumerate(losses):
        avg = 0.98 * avg + 0.02 * v
        smoothed.append(avg / (1 - 0.98 ** (step + 1)))
    return list(lrs), list(losses), smoothed


def test_lr_find_reads_a_known_minimum_and_steepest_descent():
    lrs, losses, smoothed = synthetic_sweep()
    min_lr, steepest = _suggestions(lrs, losses, smoothed)
    assert min_lr == pytest.approx(1e-2, rel=0.13) and steepest == pytest.approx(1e-3, rel=0.13)  # one grid step
    assert lrs[int(np.argmin(smoothed))] > 2 * min_lr  # the exponential average's minimum lags: not read from it


def test_lr_find_prints_the_lr_that_gives_the_phase_a_tenth_of_the_minimum(trained, tmp_path, monkeypatch, capsys):
    _, _, run, _ = trained
    lrs, losses, smoothed = synthetic_sweep()

    def fake_lr_find(model, loader, runtime, phase, **kwargs):
        min_lr, steepest = _suggestions(lrs, losses, smoothed)
        return LRFinderResult(lrs, losses, smoothed, min_lr / 10, min_lr, steepest, False)

    monkeypatch.setattr(lr_finder, "lr_find", fake_lr_find)
    assert main(["lr-find", str(run), "--out", str(tmp_path / "lf"), "--workers", "0", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    # fine-tune (the run's linear probe has no swept phase): its phase trains at --lr / 2, so --lr is 2 x min/10
    assert printed.startswith("suggested: --strategy fine-tune --lr 0.002, which trains the head of phase "
                              "'fine-tune' at 0.001 (--lr x 0.5): a tenth of the rate at the loss minimum, 0.01 ")
    record = json.loads((tmp_path / "lf" / "lr_find.json").read_text())
    assert record["suggested_cli_lr"] == pytest.approx(2 * record["suggested_lr"]) == pytest.approx(2e-3, rel=0.13)
