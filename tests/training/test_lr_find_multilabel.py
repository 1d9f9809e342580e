"""lr-find on multi-label data: a multi-label CSV or a run trained on one is swept on the loss train_multilabel
trains with (BCE per label, positive weights as train gives them), from 2x2 mosaics of real Fashion-MNIST items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headstart.cli import main
from headstart.core.runtime import make_runtime
from headstart.data.mosaic import make_mosaic_set
from headstart.data.rundir import RunDir
from headstart.training import lr_finder
from headstart.training.lr_finder import lr_find
from headstart.training.multilabel import MultiLabelObjective, positive_weights
from headstart.zoo import create_backbone
from headstart.zoo.model import build_model

FAST = ["--model", "resnet20", "--workers", "0", "--batch-size", "8"]


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    """40 mosaics of 3 garments, a resnet20 'pretrained' file, and a multi-label linear-probe run on them."""
    root = tmp_path_factory.mktemp("lr-find-multilabel")
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    weights = root / "r20.pth"
    torch.save(backbone.state_dict(), weights)
    manifest = make_mosaic_set(root / "data", train=40, test=0, classes=3, seed=0)
    run = root / "run"
    assert main(["train", str(manifest), "--out", str(run), *FAST, "--weights", str(weights), "--image-size", "32",
                 "--strategy", "linear-probe", "--balance", "weights", "--no-report"]) == 0
    return manifest, weights, run


@pytest.fixture
def objectives(monkeypatch):
    """Every MultiLabelObjective lr-find makes, and each loss its criterion computed."""
    made = []

    class Spy(MultiLabelObjective):
        def criterion(self, logits, targets):
            loss = super().criterion(logits, targets)
            self.losses.append(loss.item())
            return loss

    def make(pos_weight):
        spy = Spy(pos_weight)
        object.__setattr__(spy, "losses", [])
        made.append(spy)
        return spy

    monkeypatch.setattr(lr_finder, "MultiLabelObjective", make)
    return made


def test_lr_find_sweeps_a_multilabel_csv_on_its_bce(mosaics, tmp_path, objectives, capsys):
    manifest, weights, _ = mosaics
    out = tmp_path / "lf"
    assert main(["lr-find", str(manifest), "--out", str(out), *FAST, "--weights", str(weights), "--image-size", "32",
                 "--steps", "12"]) == 0
    record = json.loads((out / "lr_find.json").read_text())
    assert record["task"] == "multilabel" and record["strategy"] == "fine-tune"
    assert record["loss"].startswith("binary cross-entropy per label")
    assert np.isfinite(record["suggested_cli_lr"]) and record["suggested_cli_lr"] == pytest.approx(
        2 * record["suggested_lr"])  # fine-tune's phase runs at lr / 2, as for single-label data
    (objective,) = objectives
    assert objective.losses == pytest.approx(record["losses"])  # every step's loss is the multi-label objective's
    assert (out / "lr_find.png").stat().st_size > 1000
    said = capsys.readouterr().out
    assert "suggested: --strategy fine-tune --lr" in said and "multi-label: swept on the training loss" in said


def test_lr_find_on_a_multilabel_run_uses_its_positive_weights(mosaics, objectives):
    _, _, run = mosaics
    before = (run / "best.safetensors").read_bytes()
    assert main(["lr-find", str(run), "--steps", "10", "--workers", "0", "--batch-size", "8"]) == 0
    assert (run / "best.safetensors").read_bytes() == before  # the run's weights are not changed
    record = json.loads((run / "lr_find.json").read_text())
    assert record["task"] == "multilabel" and record["loss"].endswith("with positive weights")
    train = RunDir(run).split().train
    expected = positive_weights(np.array([y for _, y in train]), balance=True)  # the run asked for --balance weights
    (objective,) = objectives
    torch.testing.assert_close(objective.pos_weight, expected)
    assert objective.losses == pytest.approx(record["losses"]) and len(record["losses"]) >= 2


def test_lr_find_takes_the_multilabel_criterion():
    torch.manual_seed(0)
    model = build_model("resnet20", 3, pretrained=False)
    x = torch.randn(16, 3, 32, 32)
    y = (torch.rand(16, 3) > 0.5).long()  # several labels per image: cross-entropy could not take these targets
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def bce(logits, targets):
        seen.append(targets.shape)
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())

    result = lr_find(model, loader, make_runtime("cpu", "fp32"), steps=8, criterion=bce)
    assert len(result.lrs) >= 2 and all(s == (8, 3) for s in seen) and len(seen) >= len(result.losses)
    assert all(np.isfinite(result.losses)) and np.isfinite(result.suggested_lr)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_lr_find_on_a_csv_names_its_default_folder_without_the_extension(mosaics, tmp_path, monkeypatch, capsys):
    manifest, weights, _ = mosaics
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", str(manifest), *FAST, "--weights", str(weights), "--image-size", "32", "--steps", "6"]) == 0
    assert (tmp_path / "runs" / f"lr-find-{manifest.stem}" / "lr_find.json").exists()
    assert f"runs/lr-find-{manifest.stem}/lr_find.png" in capsys.readouterr().out
