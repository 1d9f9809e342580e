"""Any timm model as ``timm:<name>``, with its pretrained config and its own layer groups."""

from __future__ import annotations

import difflib
import os

import timm
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from timm.models import group_parameters
from torch import nn

from headstart.core.errors import UsageError
from headstart.zoo.registry import BackboneSpec, WeightSource, register_prefix


def timm_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Coarse layer groups from timm's ``group_matcher`` (stem, stages...), as module-name prefixes."""
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    groups = []
    for i, names in enumerate(grouped.values()):
        # Parameter names -> owning module names, keeping order and dropping repeats.
        modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
        groups.append((f"group{i}", modules))
    return groups


def _hf_cached(hf_id: str | None) -> str | None:
    if not hf_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hf_id, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hf_fetch(hf_id: str) -> str:
    return hf_hub_download(hf_id, "model.safetensors")


def timm_spec(model_name: str) -> BackboneSpec:
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise UsageError(f"timm has no model '{model_name}'.{hint}")
    probe = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = probe.pretrained_cfg
    hf_id = cfg.get("hf_hub_id")
    sources = (
        WeightSource("cache", f"Hugging Face cache for {hf_id}", locate=lambda: _hf_cached(hf_id)),
        WeightSource("download", f"Hugging Face hub {hf_id}", locate=lambda: None,
                     fetch=(lambda: _hf_fetch(hf_id)) if hf_id else None),
    )
    classifier = cfg.get("classifier", "head.fc")
    return BackboneSpec(
        name=f"timm:{model_name}",
        build=lambda: timm.create_model(model_name, pretrained=False, num_classes=0),
        num_features=probe.num_features,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        groups=timm_groups,
        sources=sources,
        classifier_prefixes=tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier)),
        family="timm",
        # timm's own record of its last stage: a convolutional map for CNNs (tokens for a transformer, which
        # headstart.explain refuses in a sentence).
        cam_layer=probe.feature_info[-1]["module"] if getattr(probe, "feature_info", None) else "",
    )


register_prefix("timm", timm_spec)
