import pytest
import torch
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm

from headstart import fine_tune_resnet, freeze_pretrained_layers, load_pretrained_resnet
from headstart.training.strategy import make_strategy, resolve_train_from
from headstart.zoo.model import build_model


@pytest.fixture
def resnet(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return load_pretrained_resnet(num_classes=5, weights_file=path)


def test_load_pretrained_resnet_replaces_the_head(resnet):
    assert resnet.head.out_features == 5
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert resnet.group_names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def test_freeze_pretrained_layers(resnet):
    freeze_pretrained_layers(resnet)
    assert resnet.trainable_parameters() == 512 * 5 + 5
    freeze_pretrained_layers(resnet, freeze=False)
    assert resnet.trainable_parameters() == sum(p.numel() for p in resnet.parameters())


def test_fine_tune_resnet_freezes_layer1_and_layer2(resnet):
    groups = fine_tune_resnet(resnet, lr=1e-3)
    bb = resnet.backbone
    for module in (bb.conv1, bb.bn1, bb.layer1, bb.layer2):
        assert not any(p.requires_grad for p in module.parameters())
    for module in (bb.layer3, bb.layer4, resnet.head):
        assert all(p.requires_grad for p in module.parameters())
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[1]["lr"] == pytest.approx(1e-3)
    assert sum(p.numel() for g in groups for p in g["params"]) == resnet.trainable_parameters()


def test_frozen_batchnorm_keeps_its_statistics(resnet):
    fine_tune_resnet(resnet)
    resnet.bn_policy = "train"  # statistics of trainable groups may adapt; frozen groups' never do
    resnet.train()
    frozen_bn = resnet.backbone.layer1[0].bn1
    live_bn = resnet.backbone.layer4[0].bn1
    assert not frozen_bn.training and live_bn.training
    before_frozen, before_live = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    resnet(torch.randn(4, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(frozen_bn.running_mean, before_frozen)
    assert not torch.allclose(live_bn.running_mean, before_live)
    resnet.bn_policy = "frozen"  # the default: every BatchNorm keeps its pretrained statistics
    resnet.train()
    assert not any(m.training for m in resnet.modules() if isinstance(m, _BatchNorm))
    assert resnet.backbone.layer4[0].bn1.weight.requires_grad  # ...while its affine weights still learn


def test_set_trainable_rejects_bad_index():
    model = build_model("resnet20", 3, pretrained=False)
    with pytest.raises(ValueError, match="between 0 and"):
        model.set_trainable(17)


def test_strategies_are_lists_of_phases():
    ft = make_strategy("fine-tune", epochs=10)
    assert [p.name for p in ft.phases] == ["head", "fine-tune"]
    assert ft.phases[1].backbone_lr_scale == pytest.approx(0.1)
    assert resolve_train_from(ft.phases[1].train_from, 6) == 3  # resnet: stem, layer1, layer2 frozen
    assert not make_strategy("scratch").pretrained
    assert make_strategy("linear-probe").phases[0].fit == "features"
    with pytest.raises(ValueError, match="e.g. --strategy fine-tune"):
        make_strategy("finetune")
