"""Frozen-backbone features: extracted fast and cached on disk by image content (heads fitted on them live in
:mod:`headstart.training`).

- :mod:`~headstart.features.extract`: the extraction pipeline (decode in workers, bf16/AMP backbone) and the
  cache-aware :func:`extract_features`.
- :mod:`~headstart.features.cache`: the on-disk, memory-mapped cache keyed by backbone, weights, preprocessing
  and each image's content hash (:mod:`headstart.core.hashing` computes both digests).
- :mod:`~headstart.features.forward`: the backbone's eval forward, BatchNorm folded or through ONNX Runtime.
"""

import importlib

# Where each public name lives. Imported on first use (PEP 562): ``headstart.predict.cached`` answers a frozen
# run's ``evaluate`` without torch, and importing it must not import the extraction pipeline (and torch) through
# this package.
_WHERE = {"FeatureCache": "cache", "cache_root": "cache", "Features": "extract", "cache_key": "extract",
          "extract_features": "extract", "iter_features": "extract"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = ["FeatureCache", "Features", "cache_key", "cache_root", "extract_features", "iter_features"]
