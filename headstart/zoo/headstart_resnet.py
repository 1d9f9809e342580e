"""Registers headstart's own ResNets (``headstart.zoo.resnet``) in the zoo.

``hs_resnet18`` ... ``hs_resnet152`` take torchvision's ImageNet weights unchanged (same parameter names), from the
same cache or download. ``resnet20/32/56`` are He et al.'s small-image layout, the from-scratch baseline for small
images; they have no pretrained weights.
"""

from __future__ import annotations

from torchvision import models as tvm

from headstart.zoo import resnet
from headstart.zoo.registry import BackboneSpec, register
from headstart.zoo.torchvision_models import _sources, _spec_preprocessing


def _headless(builder):
    def build():
        model = builder(num_classes=1000)
        model.reset_classifier(0)
        return model

    return build


def _groups(model) -> list[tuple[str, list[str]]]:
    groups = []
    for modules in model.layer_groups():
        if modules == ["fc"]:
            continue  # the headless backbone's fc is an identity; TransferModel adds its own head
        groups.append(("stem" if "conv1" in modules else modules[0], modules))
    return groups


_TV_WEIGHTS = {
    "resnet18": (tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": (tvm.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": (tvm.ResNet50_Weights.IMAGENET1K_V2, 2048),
    "resnet101": (tvm.ResNet101_Weights.IMAGENET1K_V2, 2048),
    "resnet152": (tvm.ResNet152_Weights.IMAGENET1K_V2, 2048),
}

for _name, (_weights, _features) in _TV_WEIGHTS.items():
    register(BackboneSpec(
        name=f"hs_{_name}", build=_headless(resnet.BUILDERS[_name]), num_features=_features, groups=_groups,
        sources=_sources(_weights), classifier_prefixes=("fc.",), family="headstart (torchvision weights)",
        cam_layer="layer4",
        **_spec_preprocessing(_weights),
    ))

for _depth in (20, 32, 56):
    register(BackboneSpec(
        name=f"resnet{_depth}", build=_headless(resnet.BUILDERS[f"resnet{_depth}"]), num_features=64,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32, interpolation="bilinear", crop_pct=1.0,
        groups=_groups, family="headstart (small images, scratch)", small_images=True, cam_layer="layer3",
    ))
