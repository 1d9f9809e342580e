"""A large extraction is written in shards committed as they fill, so a run stopped midway resumes from there."""

import numpy as np
import pytest
import torch

import headstart.features.extract as extract_module
from headstart.core.progress import progress
from headstart.core.runtime import make_runtime
from headstart.data.sources import read_class_folders
from headstart.features import FeatureCache, extract_features
from headstart.zoo.model import build_model
from tests.conftest import make_class_folder


def test_an_interrupted_extraction_keeps_its_full_shards(tmp_path, monkeypatch):
    torch.manual_seed(0)
    runtime = make_runtime("cpu", "fp32")
    model = runtime.prepare(build_model("resnet20", 3, pretrained=False))
    paths = [p for p, _ in read_class_folders(make_class_folder(tmp_path / "data", per_class=10))[1]]
    kw = dict(preprocessing=model.spec.preprocessing(), runtime=runtime, batch_size=4, workers=0,
              cache_dir=tmp_path / "cache")
    reference = extract_features(model, paths, **{**kw, "cache_dir": tmp_path / "reference"}).array()
    monkeypatch.setattr(extract_module, "SHARD_ROWS", 8)  # two batches a shard
    real, seen = extract_module.iter_features, []

    def stopped(*args, **kwargs):
        for batch in real(*args, **kwargs):
            if len(seen) == 5:  # in the middle of the third shard
                raise KeyboardInterrupt
            seen.append(batch)
            yield batch

    monkeypatch.setattr(extract_module, "iter_features", stopped)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, paths, **kw)
    first = FeatureCache(extract_module.cache_key(model, kw["preprocessing"], runtime), tmp_path / "cache")
    assert len(first) == 16 and len(first.shards) == 2  # the two full shards, not the half-written third
    monkeypatch.setattr(extract_module, "iter_features", real)
    resumed = extract_features(model, paths, **kw)
    assert resumed.computed == 14
    np.testing.assert_allclose(resumed.array(), reference, rtol=1e-5, atol=1e-6)
    assert len(FeatureCache(resumed.cache.key, tmp_path / "cache").shards) == 4  # 8 + 8 committed, then 8 + 6


def test_progress_lines_count_images_and_say_the_time_left(capsys):
    assert list(progress(range(4), "features", interval=0, unit="img", per_item=32)) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("features: 32/128 img (") and "img/s" in lines[0] and "left)" in lines[0]
