"""adapt on a multi-label run: AdaBN changes the BatchNorm statistics only, and the adapted run keeps the decision
(a temperature and a threshold per label) that predict, evaluate and report read, on 2x2 Fashion-MNIST mosaics."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from headstart.cli import main
from headstart.data.mosaic import make_mosaic_set
from headstart.data.rundir import RunDir
from headstart.zoo import create_backbone


@pytest.mark.slow
def test_adapt_keeps_a_multilabel_runs_decision(tmp_path, capsys):
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)  # BatchNorm layers to adapt
    torch.save(backbone.state_dict(), tmp_path / "r20.pth")
    manifest = make_mosaic_set(tmp_path / "data", train=40, test=10, classes=3, seed=0, split_column=True)
    run, adapted = tmp_path / "run", tmp_path / "adapted"
    assert main(["train", str(manifest), "--out", str(run), "--model", "resnet20", "--weights",
                 str(tmp_path / "r20.pth"), "--image-size", "32", "--strategy", "linear-probe", "--workers", "0",
                 "--no-report"]) == 0
    target = tmp_path / "target"  # a shifted domain: darker mosaics
    target.mkdir()
    for f in sorted((manifest.parent / "images").glob("t*.png")):
        Image.eval(Image.open(f), lambda v: v // 2).save(target / f.name)
    assert main(["adapt", str(run), str(target), "--out", str(adapted), "--batch-size", "8", "--workers", "0"]) == 0
    info = json.loads((adapted / "adapt.json").read_text())
    assert info["images"] == 10 and info["method"] == "aligned" and info["batchnorm_layers"] > 0
    a, b = load_file(str(run / "best.safetensors")), load_file(str(adapted / "best.safetensors"))
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in differ)
    source, header = RunDir(run).weights_metadata(), RunDir(adapted).weights_metadata()
    assert header["task"] == "multilabel" and header["decision"] == source["decision"]
    capsys.readouterr()
    assert main(["predict", str(adapted), str(target), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 10 and all(isinstance(r["labels"], list) and "all_scores" in r for r in records)
    assert main(["evaluate", str(adapted), str(manifest), "--json", "--no-report"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["task"] == "multilabel" and m["per_class"]["trouser"]["threshold"] == source["decision"]["thresholds"][
        source["classes"].index("trouser")]
    assert main(["report", str(adapted)]) == 0
    page = (adapted / "report.html").read_text(encoding="utf-8")
    assert "Adaptation" in page and "Precision-recall curves" in page and "thresholds and temperatures" in page
