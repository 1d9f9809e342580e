"""One registry of backbones by name, each with the metadata that travels with its weights.

A backbone here is a module whose ``forward`` maps images to pooled features of shape ``(B, num_features)``:
the pretrained classifier has been removed, and :class:`headstart.zoo.model.TransferModel` adds a new head.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from headstart.core.catalog import find_weights
from headstart.core.errors import UsageError
from headstart.core.preprocessing import Preprocessing

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class WeightSource:
    """One place pretrained weights may come from.

    Args:
        kind: ``package`` (ships with a pip package, offline), ``cache`` (torchvision/timm download cache)
            or ``download`` (needs the network).
        describe: a short human sentence about where it is, used in listings and errors.
        locate: returns the local file if it is present now (never touches the network), else None; by default
            :func:`headstart.core.catalog.find_weights` of ``where``.
        fetch: downloads the file and returns its path (``download`` sources only).
        where: a location :mod:`headstart.core.catalog` can check without torch: ``("package", module, class)``
            or ``("torch_hub", file name)``.
        sha256: the file's whole SHA-256 where it is known (the offline packages'): a damaged or substituted file
            is refused before it is loaded.
    """

    kind: str
    describe: str
    locate: Callable[[], str | None] | None = None
    fetch: Callable[[], str] | None = None
    where: tuple[str, ...] = ()
    sha256: str | None = None

    def __post_init__(self):
        if self.locate is None:
            object.__setattr__(self, "locate", lambda: find_weights(self.where))


@dataclass(frozen=True)
class BackboneSpec:
    """Everything headstart needs to know about a backbone, independent of the task.

    Args:
        name: registry name, e.g. ``efficientnet_lite0`` or ``timm:convnext_tiny``.
        build: builds the headless backbone with random weights.
        num_features: size of the pooled feature vector.
        mean, std: normalisation the pretrained weights expect.
        input_size: square input size in pixels the weights were trained at.
        interpolation: ``bilinear`` or ``bicubic``, as the weights were trained.
        crop_pct: eval-time centre crop fraction (resize to ``input_size / crop_pct``, then crop).
        groups: maps a built backbone to its ordered layer groups, input to output: ``[(name, [module prefixes])]``.
        sources: where pretrained weights may come from, in the order they are tried.
        convert: turns a source state dict (with its classifier) into the backbone's own naming; leaves one that
            is already in that naming unchanged.
        classifier_prefixes: keys of the pretrained classifier, dropped before loading into the headless backbone.
        family: a word for listings (``timm``, ``torchvision``, ``headstart``).
        small_images: the architecture is meant for small inputs (32 px) rather than ImageNet's 224 px.
        imagenet_top1: ImageNet-1k validation top-1 (%) of the pretrained weights, as their publisher reports it
            (torchvision's weight metadata; Google's figures for the Lite models); None for scratch-only ones.
        cam_layer: the backbone's module whose output Grad-CAM explains (``headstart.explain``): the last
            convolutional feature map before global pooling, as Selvaraju et al. (2017) use; "" when the backbone
            has none (a vision transformer's tokens).
    """

    name: str
    build: Callable[[], nn.Module]
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    interpolation: str
    crop_pct: float
    groups: Callable[[nn.Module], list[tuple[str, list[str]]]]
    sources: tuple[WeightSource, ...] = ()
    convert: Callable[[StateDict], dict[str, torch.Tensor]] | None = None
    classifier_prefixes: tuple[str, ...] = ()
    family: str = ""
    small_images: bool = False
    imagenet_top1: float | None = None
    cam_layer: str = ""

    def preprocessing(self, image_size: int | None = None) -> Preprocessing:
        """The preprocessing a run records, so predict needs nothing but the run directory."""
        return Preprocessing(int(image_size or self.input_size), self.mean, self.std, self.interpolation,
                             self.crop_pct)


_REGISTRY: dict[str, BackboneSpec] = {}
_FACTORIES: dict[str, Callable[[str], BackboneSpec]] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    assert spec.name not in _REGISTRY, f"backbone {spec.name} registered twice"
    _REGISTRY[spec.name] = spec
    return spec


def register_prefix(prefix: str, factory: Callable[[str], BackboneSpec]) -> None:
    """Names like ``timm:<model>`` are built on demand by ``factory(model)``."""
    _FACTORIES[prefix] = factory


def get_spec(name: str) -> BackboneSpec:
    """Looks a backbone up by name; an unknown name fails with the closest names suggested."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _FACTORIES:
        return _FACTORIES[prefix](rest)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(
        f"unknown model '{name}'.{hint} `headstart models` lists them all; any timm model works as 'timm:<name>'."
    )


def list_specs() -> list[BackboneSpec]:
    return list(_REGISTRY.values())
