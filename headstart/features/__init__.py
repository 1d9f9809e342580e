"""Frozen-backbone features: extracted fast, cached on disk by image content, and heads fitted on them in seconds.

- :mod:`~headstart.features.extract`: the extraction pipeline (decode in workers, bf16/AMP backbone) and the
  cache-aware :func:`extract_features`.
- :mod:`~headstart.features.cache`: the on-disk, memory-mapped cache keyed by backbone, weights, preprocessing
  and each image's content hash.
- :mod:`~headstart.features.heads`: logistic regression, nearest class mean and SGD heads, each a linear layer.
"""

import importlib

# Where each public name lives. Imported on first use (PEP 562): ``headstart.cached_run`` answers a frozen
# run's ``evaluate`` without torch, and importing it must not import the extraction pipeline (and torch) through
# this package.
_WHERE = {"FeatureCache": "cache", "cache_root": "cache", "content_hashes": "cache", "file_hash": "cache",
          "weights_fingerprint": "cache", "Features": "extract", "cache_key": "extract", "extract_features": "extract",
          "iter_features": "extract", "HEADS": "heads", "LinearHead": "heads", "fit_head": "heads"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = ["HEADS", "FeatureCache", "Features", "LinearHead", "cache_key", "cache_root", "content_hashes",
           "extract_features", "file_hash", "fit_head", "iter_features", "weights_fingerprint"]
