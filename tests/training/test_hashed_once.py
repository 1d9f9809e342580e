"""A command reads and hashes each image once: the check's content hashes travel with the splits to feature
extraction, calibration, the refit, the test and the report (a linear-probe ``train`` used to hash each validation
image five times, each training and test image three times)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from headstart.core import hashing
from headstart.training.train import TrainConfig, train
from tests.conftest import make_class_folder


def test_linear_probe_train_hashes_each_image_once(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_class_folder(data / "train", per_class=10, size=32)
    make_class_folder(data / "test", per_class=3, size=32, seed=1)
    # Files changed within RACY_NS of being read are hashed again where next needed (core.hashing.KnownHashes); a
    # user's images are older than that.
    time.sleep(hashing.RACY_NS / 1e9 + 0.1)
    counts = Counter()
    real = hashing.file_hash

    def counted(path, data=None):
        counts[os.path.abspath(path)] += 1
        return real(path, data)

    monkeypatch.setattr(hashing, "file_hash", counted)
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), strategy="linear-probe", image_size=32))
    assert summary["refit"] and summary["test_acc"] is not None and (tmp_path / "run" / "report.html").is_file()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    images = [p for name in ("train", "val", "test") for p, _ in split[name]]
    assert len(images) == 39 and {p: counts[p] for p in images} == dict.fromkeys(images, 1)
    assert set(counts) == set(images)
