"""Grad-CAM: where in the picture the evidence for a class lies.

Selvaraju et al. (2017): weight each channel of a late convolutional map by the mean gradient of the class score
with respect to it, sum, keep the positive part. The map is as coarse as that layer (7x7 for EfficientNet-Lite0 at
224 px, stride 32) and is upsampled to the input; which layer is the backbone's declared ``cam_layer``
(:class:`headstart.zoo.registry.BackboneSpec`), never guessed here. Captum (PyTorch's interpretability library)
computes it; measured on pasted Fashion-MNIST items in ``benchmarks/gradcam.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from headstart.core.errors import UsageError
from headstart.zoo.model import TransferModel


def cam_layer(model: TransferModel, layer: str | None = None) -> nn.Module:
    """The module Grad-CAM explains: ``layer`` (a module name in the backbone) or the spec's ``cam_layer``.

    Raises:
        UsageError: the backbone declares none (a vision transformer), or has no module of that name.
    """
    name = layer or model.spec.cam_layer
    if not name:
        raise UsageError(f"{model.spec.name} has no convolutional feature map for Grad-CAM; heat maps need a CNN "
                         "backbone such as efficientnet_lite0 or resnet50.")
    try:
        return model.backbone.get_submodule(name)
    except AttributeError:
        raise UsageError(f"{model.spec.name} has no layer '{name}'; pass a module name of its backbone "
                         f"(e.g. {model.spec.cam_layer or 'the last convolutional stage'}).") from None


def grad_cam(model: TransferModel, images: torch.Tensor, targets: Sequence[int], layer: str | None = None,
             batch_size: int = 16) -> np.ndarray:
    """Grad-CAM heat maps of ``images`` for the classes ``targets``, one per image.

    Args:
        model: the run's network (any mode; run in eval mode, fp32, without autocast: gradients in bf16 are coarse).
        images: ``(n, 3, H, W)`` eval-transformed images (:func:`headstart.data.transforms.eval_transform`).
        targets: the class index to explain for each image (usually its prediction).
        layer: a backbone module name instead of the spec's ``cam_layer`` (for measuring other layers).
        batch_size: images per forward and backward pass.

    Returns:
        ``(n, H, W)`` float32 maps at the input's resolution, each scaled to a maximum of 1 (all zeros where no
        location speaks for the class).
    """
    if len(targets) != len(images):
        raise UsageError(f"one target class per image is needed: {len(images)} images, {len(targets)} targets.")
    module = cam_layer(model, layer)
    was_training = model.training
    model.eval()
    device, dtype = model.head.weight.device, model.head.weight.dtype
    explainer = LayerGradCam(model, module)
    maps = []
    try:
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].to(device, dtype)
                attr = explainer.attribute(x, target=list(targets[start:start + batch_size]), relu_attributions=True)
                if attr.dim() != 4:
                    raise UsageError(f"{model.spec.name}'s layer '{layer or model.spec.cam_layer}' gives no "
                                     "spatial map; Grad-CAM needs a convolutional layer.")
                maps.append(_unit(LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")[:, 0]))
    finally:
        model.train(was_training)
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[-2:]), np.float32)


def _unit(maps: torch.Tensor) -> np.ndarray:
    """Each map divided by its maximum (a map with no positive value stays zero)."""
    maps = maps.detach().float().clamp_min(0).cpu()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (maps / peak).numpy()


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """``(row, column)`` of a heat map's maximum."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))
