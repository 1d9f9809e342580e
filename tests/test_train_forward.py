"""The fast training forward: same losses and weights as eager PyTorch, the model unchanged after, and whatever
it cannot follow (randomness or a skip from inside the frozen part, a convolution read twice) left to eager."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.core.runtime import Runtime
from headstart.engine.forward import OnnxForward
from headstart.engine.train_forward import fast_training_forward
from headstart.model import build_model
from headstart.strategy import Phase, enter_phase
from tests.conftest import randomise_batchnorm

CPU_FP32 = Runtime(torch.device("cpu"), None, channels_last=True)
MANY = 10**6  # images per epoch: ONNX Runtime pays for the frozen prefix
FEW = 1000  # at 64 px: enough for the fast path, too few to export (the folded PyTorch copy)




def _train(model: nn.Module, fast: bool, steps: int = 3, images: int = MANY, size: int = 64, classes: int = 3):
    """Losses and state dict after ``steps`` SGD steps on fixed random batches, with or without the fast path."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, classes, (4,), generator=g)) for _ in range(steps)]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    torch.manual_seed(0)
    model.train()
    losses = []
    with fast_training_forward(model, CPU_FP32, images) if fast else contextlib.nullcontext(model) as forward:
        for x, y in batches:
            loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, {k: v.clone() for k, v in model.state_dict().items()}, getattr(forward, "plan", None)


def _assert_same_training(make, **kwargs):
    """Same losses, same statistics, same weight updates (to rounding: a ReLU whose input is about 0 may flip, which
    moves the gradients by that one element; a wrong fusion would be off by the whole update)."""
    eager_model = make()
    fast_model = copy.deepcopy(eager_model)
    names = [n for n, _ in fast_model.named_modules()]
    start = {k: v.clone() for k, v in eager_model.state_dict().items()}
    eager_losses, eager_state, _ = _train(eager_model, fast=False, **kwargs)
    fast_losses, fast_state, plan = _train(fast_model, fast=True, **kwargs)
    torch.testing.assert_close(fast_losses, eager_losses, rtol=1e-3, atol=1e-5)
    assert list(fast_state) == list(eager_state)
    for key, before in start.items():
        update, expected = (fast_state[key] - before).float(), (eager_state[key] - before).float()
        assert (update - expected).norm() <= 5e-2 * expected.norm() + 1e-6, key
    # Nothing of the fast path is left on the model.
    assert [n for n, _ in fast_model.named_modules()] == names
    assert not any("forward" in m.__dict__ for m in fast_model.modules())
    return plan


def _fine_tune(name: str, pretrained: bool, bn: str = "frozen", train_from: float = 0.5):
    torch.manual_seed(0)
    model = build_model(name, 3, pretrained=pretrained).to(memory_format=torch.channels_last)
    if not pretrained:
        randomise_batchnorm(model)
    enter_phase(model, Phase("fine-tune", epochs=1, lr=1e-3, train_from=train_from, bn=bn))
    return model


@pytest.mark.parametrize("images", [MANY, FEW], ids=["onnxruntime", "folded"])
def test_lite0_fine_tune_trains_the_same_weights(images):
    plan = _assert_same_training(lambda: _fine_tune("efficientnet_lite0", pretrained=True), images=images)
    # The stem and the first three stages run as one eval network; every later conv + BatchNorm as one conv.
    assert [type(m).__name__ for m in plan.prefix] == ["Conv2dSame", "BatchNormAct2d"] + ["Sequential"] * 3
    assert isinstance(plan.prefix_forward, OnnxForward) == (images == MANY)
    assert len(plan.pairs) == 34


def test_resnet18_trains_the_same_weights_with_batchnorm_statistics_learning():
    # bn="train": the trainable groups' statistics follow the batches, so only the frozen prefix changes.
    plan = _assert_same_training(lambda: _fine_tune("resnet18", pretrained=False, bn="train"))
    assert [type(m).__name__ for m in plan.prefix] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Sequential",
                                                       "Sequential"]
    assert plan.pairs == []


def test_resnet18_full_fine_tune_fuses_every_batchnorm():
    plan = _assert_same_training(lambda: _fine_tune("resnet18", pretrained=False, train_from=0))
    assert plan.prefix == [] and len(plan.pairs) == 20


def test_engine_torch_keeps_onnx_runtime_out(monkeypatch):
    monkeypatch.setenv("HEADSTART_ENGINE", "torch")
    plan = _assert_same_training(lambda: _fine_tune("resnet18", pretrained=False), steps=1)
    assert plan.prefix and not isinstance(plan.prefix_forward, OnnxForward)


class _Net(nn.Module):
    """Frozen: conv + BatchNorm, then ``middle`` (dropout, or a block whose input a later skip reads); trainable:
    conv + BatchNorm (its output read twice when ``conv_read_twice``), head."""

    def __init__(self, middle: str = "relu", conv_read_twice: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.middle = nn.Dropout(0.5) if middle == "dropout" else nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.skip_over_middle = middle == "skip"
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv_read_twice = conv_read_twice
        self.head = nn.Linear(8, 3)
        randomise_batchnorm(self)
        for m in (self.conv1, self.bn1, self.middle):
            m.requires_grad_(False)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        y = self.middle(x) + x if self.skip_over_middle else self.middle(x)
        z = self.conv2(y)
        z = self.bn2(z) + z if self.conv_read_twice else self.bn2(z)
        return self.head(z.mean((2, 3)))

    def train(self, mode=True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.eval()  # the "frozen" BatchNorm policy
        return self


def test_dropout_in_the_frozen_part_is_left_to_pytorch():
    plan = _assert_same_training(lambda: _Net("dropout"), size=16)
    assert len(plan.prefix) == 2 and len(plan.pairs) == 1  # conv1, bn1; the dropout after them runs as it is


def test_a_skip_from_inside_the_frozen_part_ends_the_prefix_there():
    plan = _assert_same_training(lambda: _Net("skip"), size=16)
    assert len(plan.prefix) == 2  # bn1's output is read by the skip too: the prefix ends with it


def test_a_convolution_read_twice_is_not_fused():
    plan = _assert_same_training(lambda: _Net(conv_read_twice=True), size=16)
    assert len(plan.prefix) == 3 and plan.pairs == []  # the check saw the difference and dropped the pairs


def test_each_context_sees_the_frozen_weights_of_its_time():
    """Gradual unfreezing changes what is frozen between phases; nothing folded in one epoch is reused later."""
    model = _Net()
    model.train()
    x = torch.randn(2, 3, 16, 16)
    for scale in (1.0, 2.0):
        with torch.no_grad():
            model.conv1.weight.mul_(scale)  # frozen weights changed between two epochs
        with fast_training_forward(model, CPU_FP32, MANY) as forward:
            out = forward(x)
            assert forward.plan.prefix
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


def test_a_ddp_wrapped_model_trains_the_same(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plan = _assert_same_training(lambda: DistributedDataParallel(_Net()), size=16)
    finally:
        dist.destroy_process_group()
    assert plan.prefix and plan.pairs


def test_a_short_epoch_stays_eager():
    """Preparing costs about half a second: an epoch of a few small images would be slower for it."""
    model = _fine_tune("efficientnet_lite0", pretrained=True)
    _, _, plan = _train(model, fast=True, images=100, size=64)
    assert plan is not None and not plan.prefix and not plan.pairs and not any(
        "forward" in m.__dict__ for m in model.modules())


def test_headstart_train_forward_eager_turns_it_off(monkeypatch):
    monkeypatch.setenv("HEADSTART_TRAIN_FORWARD", "eager")
    _, _, plan = _train(_fine_tune("efficientnet_lite0", pretrained=True), fast=True)
    assert not plan.prefix and not plan.pairs
    monkeypatch.setenv("HEADSTART_TRAIN_FORWARD", "quick")
    from headstart.core.choices import train_forward_setting
    from headstart.core.errors import UsageError

    with pytest.raises(UsageError, match="HEADSTART_TRAIN_FORWARD must be fast or eager"):
        train_forward_setting()


def test_a_prefix_onnx_cannot_export_is_tried_and_said_once(monkeypatch, capsys):
    from headstart.engine import forward as fwd

    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'frobnicate' to ONNX is not supported")

    monkeypatch.delenv("HEADSTART_ENGINE", raising=False)
    monkeypatch.setattr(fwd, "OnnxForward", broken)
    model = _fine_tune("efficientnet_lite0", pretrained=True)
    plans = [_train(model, fast=True)[2] for _ in range(2)]  # two epochs, each with its own context
    assert all(p.prefix for p in plans)  # the folded copy ran the prefix instead
    assert capsys.readouterr().err.count("could not run this network") == 1
