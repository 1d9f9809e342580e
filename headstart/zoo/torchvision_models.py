"""torchvision's classification models, with preprocessing taken from their weights enums."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from headstart.core.catalog import find_weights
from headstart.zoo.registry import BackboneSpec, WeightSource, register


def _fetch(url: str) -> str:
    torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, map_location="cpu", weights_only=True)
    path = find_weights(("torch_hub", Path(url).name))
    assert path is not None, "torch.hub downloaded to an unexpected place"
    return path


def _sources(weights) -> tuple[WeightSource, ...]:
    url = weights.url
    return (
        WeightSource("cache", f"torch hub cache {Path(url).name}", where=("torch_hub", Path(url).name)),
        WeightSource("download", url, locate=lambda: None, fetch=lambda: _fetch(url)),
    )


def _headless(builder, replace: str):
    """Builds the torchvision model and swaps its final classifier layer (``replace``) for an identity."""

    def build() -> nn.Module:
        model = builder(weights=None)
        parent_name, _, child = replace.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
        return model

    return build


def _static(groups: list[tuple[str, list[str]]]):
    return lambda _model: groups


def _resnet_groups():
    return _static([("stem", ["conv1", "bn1"]), ("layer1", ["layer1"]), ("layer2", ["layer2"]),
                    ("layer3", ["layer3"]), ("layer4", ["layer4"])])


def _vgg_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """VGG's ``features`` split at its max-pools into five blocks, then the two hidden fully-connected layers."""
    groups, current = [], []
    for name, layer in model.features.named_children():
        current.append(f"features.{name}")
        if isinstance(layer, nn.MaxPool2d):
            groups.append((f"block{len(groups) + 1}", current))
            current = []
    return groups + [("fc", ["classifier"])]


def _indexed(prefix: str, n: int, names: list[str] | None = None):
    return _static([(names[i] if names else f"{prefix}{i}", [f"{prefix}.{i}"]) for i in range(n)])


def _spec_preprocessing(weights) -> dict:
    t = weights.transforms()
    crop = t.crop_size[0]
    return dict(mean=tuple(t.mean), std=tuple(t.std), input_size=crop, crop_pct=crop / t.resize_size[0],
                interpolation=t.interpolation.value, imagenet_top1=weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])


def _register(name: str, builder, weights, replace: str, num_features: int, groups, classifier: str,
              cam_layer: str = "features") -> None:
    """``cam_layer``: the last convolutional map before pooling; ``features`` (the whole trunk) for every family
    but the ResNets."""
    register(BackboneSpec(
        name=name, build=_headless(builder, replace), num_features=num_features, groups=groups,
        sources=_sources(weights), classifier_prefixes=(classifier,), family="torchvision",
        cam_layer=cam_layer, **_spec_preprocessing(weights),
    ))


_register("resnet18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc", 512, _resnet_groups(), "fc.",
          "layer4")
_register("resnet34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, "fc", 512, _resnet_groups(), "fc.",
          "layer4")
_register("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc", 2048, _resnet_groups(), "fc.",
          "layer4")
_register("vgg16", tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "classifier.6", 4096, _vgg_groups, "classifier.6.")
_register("vgg16_bn", tvm.vgg16_bn, tvm.VGG16_BN_Weights.IMAGENET1K_V1, "classifier.6", 4096, _vgg_groups,
          "classifier.6.")
_register("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, "classifier", 1280,
          _indexed("features", 9, ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head_conv"]), "classifier.")
_register("mobilenet_v3_large", tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2,
          "classifier.3", 1280,
          lambda m: [(f"features{i}", [f"features.{i}"]) for i in range(len(m.features))]
          + [("pre_logits", ["classifier"])], "classifier.3.")
_register("mobilenet_v3_small", tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
          "classifier.3", 1024,
          lambda m: [(f"features{i}", [f"features.{i}"]) for i in range(len(m.features))]
          + [("pre_logits", ["classifier"])], "classifier.3.")
_register("convnext_tiny", tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier.2", 768,
          lambda m: [(f"features{i}", [f"features.{i}"]) for i in range(len(m.features))]
          + [("norm", ["classifier"])], "classifier.2.")
