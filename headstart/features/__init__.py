"""Frozen-backbone features: extracted fast, cached on disk by image content, and heads fitted on them in seconds.

- :mod:`~headstart.features.extract`: the extraction pipeline (decode in workers, bf16/AMP backbone) and the
  cache-aware :func:`extract_features`.
- :mod:`~headstart.features.cache`: the on-disk, memory-mapped cache keyed by backbone, weights, preprocessing
  and each image's content hash.
- :mod:`~headstart.features.heads`: logistic regression, nearest class mean and SGD heads, each a linear layer.
"""

from headstart.features.cache import FeatureCache, cache_root, content_hashes, file_hash, weights_fingerprint
from headstart.features.extract import Features, cache_key, extract_features, iter_features
from headstart.features.heads import HEADS, LinearHead, fit_head

__all__ = ["HEADS", "FeatureCache", "Features", "LinearHead", "cache_key", "cache_root", "content_hashes",
           "extract_features", "file_hash", "fit_head", "iter_features", "weights_fingerprint"]
