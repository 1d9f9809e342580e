"""The fast eval forward: BatchNorm folded into the convolutions, ONNX Runtime, and the rule that picks one."""

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.cli import main
from headstart.core.errors import UsageError
from headstart.core.preprocessing import Preprocessing
from headstart.core.runtime import Runtime
from headstart.data.sources import read_class_folders
from headstart.features import extract_features
from headstart.features import forward as fwd
from headstart.predict.run import LoadedRun
from headstart.zoo.model import build_model
from tests.conftest import make_class_folder, randomise_batchnorm

CPU_FP32 = Runtime(torch.device("cpu"), None, channels_last=True)


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    return randomise_batchnorm(model).eval()


@pytest.mark.parametrize("name, expected", [("resnet18", 20), ("efficientnet_lite0", 49)])
def test_folding_keeps_the_outputs_and_leaves_the_original_alone(name, expected):
    torch.manual_seed(0)
    backbone = _randomise_batchnorm(build_model(name, 3, pretrained=False).backbone)
    backbone.train()  # the module being trained: the fold works on an eval copy
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = backbone.eval()(x)
    backbone.train()
    folded, count = fwd.fold_batchnorm(backbone, x[:1])
    assert count == expected
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, _BatchNorm) for m in backbone.modules()) == expected and backbone.training
    with torch.no_grad():
        torch.testing.assert_close(folded(x), reference, rtol=1e-4, atol=1e-4)


class _ConvOutputUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # folding the BatchNorm into the conv would change the skip


class _BatchNormNotAfterTheConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)  # registered as a pair, but...

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))  # ...a ReLU stands between them


class _SharedModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c, self.bn_c = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        x = self.bn(self.a(x)) + self.bn(self.b(x))  # one BatchNorm after two convolutions
        return self.bn_c(self.c(self.bn_c(self.c(x))))  # one pair run twice: left alone too (conservative)


class _WeightNormConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3, padding=1))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("cls, expected", [(_ConvOutputUsedTwice, 0), (_BatchNormNotAfterTheConv, 0),
                                           (_SharedModules, 0), (_WeightNormConv, 0)])
def test_what_cannot_be_folded_is_left_as_it_was(cls, expected):
    torch.manual_seed(0)
    model = _randomise_batchnorm(cls())
    x = torch.randn(2, 3, 8, 8)
    folded, count = fwd.fold_batchnorm(model, x[:1])
    assert count == expected
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_onnx_runtime_computes_what_pytorch_computes():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    backbone = _randomise_batchnorm(build_model("efficientnet_lite0", 3, pretrained=False).backbone)
    x = torch.randn(5, 3, 96, 96)
    with torch.no_grad():
        reference = backbone(x)
    run = fwd.OnnxForward(backbone, x[:1])
    torch.testing.assert_close(run(x), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(run(x[:2, :, :64, :64]), backbone(x[:2, :, :64, :64]).detach(), rtol=1e-4, atol=1e-4)


def test_the_engine_rule(monkeypatch):
    monkeypatch.delenv("HEADSTART_ENGINE", raising=False)
    monkeypatch.setattr(fwd, "has_onnxruntime", lambda: True)
    assert fwd.choose_engine(CPU_FP32, 1000, 224, 224) == "onnxruntime"
    assert fwd.choose_engine(CPU_FP32, 10, 224, 224) == "torch"  # exporting would cost more than it saves
    assert fwd.choose_engine(CPU_FP32, 1000, 32, 32) == "torch"
    bf16 = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True)
    assert fwd.choose_engine(bf16, 1000, 224, 224) == "torch"  # ONNX Runtime's CPU kernels are fp32
    monkeypatch.setattr(fwd, "has_onnxruntime", lambda: False)
    assert fwd.choose_engine(CPU_FP32, 1000, 224, 224) == "torch"
    with pytest.raises(UsageError, match="pip install onnxruntime"):
        fwd.choose_engine(CPU_FP32, 10, 224, 224, engine="onnxruntime")
    monkeypatch.setattr(fwd, "has_onnxruntime", lambda: True)
    monkeypatch.setenv("HEADSTART_ENGINE", "torch")
    assert fwd.choose_engine(CPU_FP32, 1000, 224, 224) == "torch"
    monkeypatch.setenv("HEADSTART_ENGINE", "onnxruntime")
    assert fwd.choose_engine(CPU_FP32, 1, 8, 8) == "onnxruntime"
    monkeypatch.setenv("HEADSTART_ENGINE", "tensorrt")
    with pytest.raises(UsageError, match="HEADSTART_ENGINE must be one of auto, torch, onnxruntime"):
        fwd.choose_engine(CPU_FP32, 1000, 224, 224)


def test_a_mistyped_engine_stops_the_command_at_once(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HEADSTART_ENGINE", "tensorrt")
    assert main(["evaluate", str(tmp_path / "no-run"), str(tmp_path)]) == 2  # before the run is even looked for
    assert "HEADSTART_ENGINE must be one of auto, torch, onnxruntime, got 'tensorrt'" in capsys.readouterr().err


def test_a_failed_export_falls_back_to_pytorch_only_under_auto(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'frobnicate' to ONNX is not supported")

    monkeypatch.setattr(fwd, "OnnxForward", broken)
    model = _randomise_batchnorm(build_model("resnet20", 3, pretrained=False).backbone)
    x = torch.randn(2, 3, 32, 32)
    monkeypatch.delenv("HEADSTART_ENGINE", raising=False)
    run = fwd.eval_forward(model, CPU_FP32, x[:1], "onnxruntime")
    assert "computing with PyTorch instead" in capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(run(CPU_FP32.to_input(x)), model(x), rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("HEADSTART_ENGINE", "onnxruntime")
    with pytest.raises(RuntimeError, match="frobnicate"):
        fwd.eval_forward(model, CPU_FP32, x[:1], "onnxruntime")


def test_features_through_either_engine_agree(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = CPU_FP32.prepare(build_model("efficientnet_lite0", 3, pretrained=False))  # channels-last weights
    _randomise_batchnorm(model.backbone)
    pre = model.spec.preprocessing(64)
    paths = [p for p, _ in read_class_folders(make_class_folder(tmp_path / "d", per_class=3, size=40))[1]]
    out = {}
    for engine in ("torch", "onnxruntime"):
        monkeypatch.setenv("HEADSTART_ENGINE", engine)
        out[engine] = extract_features(model, paths, pre, CPU_FP32, batch_size=4, workers=0,
                                       cache_dir=tmp_path / f"cache-{engine}").array()
    torch.testing.assert_close(torch.from_numpy(out["onnxruntime"]), torch.from_numpy(out["torch"]),
                               rtol=1e-4, atol=1e-4)


def test_a_loaded_run_keeps_its_fast_forward_until_the_weights_change(tmp_path, monkeypatch):
    """A service predicts per request: the folded copy is made once, and again only when the weights change."""
    monkeypatch.setenv("HEADSTART_ENGINE", "torch")
    model = build_model("resnet20", 3, pretrained=False).eval()
    run = LoadedRun(model, ["a", "b", "c"], Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0), {},
                    CPU_FP32, tmp_path)
    made = []
    real = fwd.fold_batchnorm
    monkeypatch.setattr(fwd, "fold_batchnorm", lambda *a: made.append(1) or real(*a))
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    first = run.predict(images, topk=3)
    assert run.predict(images, topk=3) == first and len(made) == 1
    with torch.no_grad():
        model.head.bias.add_(torch.tensor([0.0, 0.0, 50.0]))  # in place: class c wins everywhere
    assert [r["label"] for r in run.predict(images)] == ["c"] * 3 and len(made) == 2


def test_an_operator_onnx_lacks_is_one_line_and_the_answer_is_unchanged(monkeypatch, capfd):
    """A forward whose branch depends on the data cannot be exported (torch.export cannot guard on it): the
    exporter reports at length; the user sees one line and gets PyTorch's numbers."""
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("HEADSTART_ENGINE", raising=False)
    torch.manual_seed(0)

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.flatten(1) * 2 if y.mean() > 0 else y.flatten(1)

    net = DataDependent().eval()
    x = torch.randn(2, 3, 12, 12)
    run = fwd.eval_forward(net, CPU_FP32, x[:1], "onnxruntime")
    out, err = capfd.readouterr()
    assert "note: ONNX Runtime could not run this network" in err
    assert err.count("note: ONNX Runtime could not run this network") == 1
    with torch.no_grad():
        torch.testing.assert_close(run(CPU_FP32.to_input(x)), net(x))
    fwd.eval_forward(net, CPU_FP32, x[:1], "onnxruntime")  # the next pass: not tried again, not said again
    assert capfd.readouterr().err == ""


def test_silenced_closes_the_copy_it_made_when_the_second_fails(monkeypatch):
    made, real_dup = [], os.dup

    def dup(fd):
        if fd == 2:
            raise OSError("no standard error")
        made.append(real_dup(fd))
        return made[-1]

    monkeypatch.setattr(fwd.os, "dup", dup)
    with fwd._silenced():
        pass
    assert len(made) == 1
    with pytest.raises(OSError):
        os.fstat(made[0])  # closed, not leaked
