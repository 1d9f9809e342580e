"""The backbone zoo: look a backbone up by name, build it, and load its pretrained weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from headstart.core.choices import DEFAULT_MODEL
from headstart.zoo import efficientnet_lite, headstart_resnet, timm_models, torchvision_models  # noqa: F401 - register
from headstart.zoo.registry import BackboneSpec, get_spec, list_specs
from headstart.zoo.weights import MissingWeightsError, ResolvedWeights, load_into_backbone, resolve_weights


def create_backbone(
    name: str, pretrained: bool = True, weights_file: str | Path | None = None, download: bool = True
) -> tuple[nn.Module, BackboneSpec, ResolvedWeights | None]:
    """Builds a headless backbone by name and loads its pretrained weights.

    Args:
        name: a registry name (``headstart models``) or ``timm:<name>``.
        pretrained: load ImageNet weights (from ``weights_file`` or the spec's sources); False gives random weights.
        weights_file: an explicit .safetensors/.pth/.pt state dict, tried before anything else.
        download: allow downloading when the weights are not available offline.

    Returns:
        The backbone (images -> pooled features), its spec, and where its weights came from (None when random).
    """
    spec = get_spec(name)
    backbone = spec.build()
    resolved = None
    if pretrained or weights_file is not None:
        resolved = resolve_weights(spec, weights_file, download=download)
        load_into_backbone(spec, backbone, resolved.state_dict)
    return backbone, spec, resolved


__all__ = ["BackboneSpec", "DEFAULT_MODEL", "MissingWeightsError", "create_backbone", "get_spec", "list_specs",
           "resolve_weights"]
