"""The zoo's listing without importing torch: ``headstart models`` answers in a fraction of a second.

``catalog.json`` holds what a listing shows of each registered backbone (family, feature size, input size) and
where its weights may already be on this machine (``where``: a pip package's module and class, or a file name in
torch hub's cache). It is written from the registry itself (``python -m headstart.zoo``) and a test checks that it
still matches, so the two cannot drift. The registry's own sources find their files with
:func:`find_weights` too: one answer to "is it here?".
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

CATALOG = Path(__file__).with_name("catalog.json")


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``,
    else ``~/.cache/torch/hub``."""
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def find_weights(where: tuple[str, ...] | list[str]) -> str | None:
    """The local file a weights location names, if it is present now (never the network).

    ``("package", module, class)``: the file a pip package ships (``class.get_model_file_path()``);
    ``("torch_hub", file name)``: torch hub's checkpoint cache, where torchvision's downloads go.
    """
    if not where:
        return None
    kind, *args = where
    if kind == "package":
        module, cls = args
        try:
            path = getattr(importlib.import_module(module), cls).get_model_file_path()
        except ImportError:
            return None
    elif kind == "torch_hub":
        path = str(torch_hub_dir() / "checkpoints" / args[0])
    else:
        raise ValueError(f"unknown weights location {where!r}")
    return path if Path(path).is_file() else None


def listing() -> list[dict]:
    """One row per registered backbone, with where its pretrained weights are now (``weights``, ``available``)."""
    rows = []
    for entry in json.loads(CATALOG.read_text()):
        found = next(((kind, path) for kind, where, *_ in entry["sources"] if (path := find_weights(where))), None)
        if not entry["sources"]:
            status = "none (random init: scratch only)"
        else:
            status = f"{found[0]}: {found[1]}" if found else "needs network or --weights FILE"
        rows.append({k: entry.get(k) for k in ("name", "family", "num_features", "input_size", "params_m",
                                               "imagenet_top1")}
                    | {"weights": status, "available": found is not None})
    return rows
