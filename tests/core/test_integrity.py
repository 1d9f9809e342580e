"""Files checked before they are trusted, and a feature cache that stays within its size."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.cli import main
from headstart.core.errors import DataError, WeightsError
from headstart.data import fashion_mnist
from headstart.features import cache as cache_module
from headstart.features.cache import library_versions
from headstart.zoo import get_spec
from headstart.zoo.weights import read_state_dict


def test_a_file_named_with_a_hash_prefix_must_match_it(tmp_path):
    good = tmp_path / "w.pth"
    torch.save({"a": torch.ones(3)}, good)
    prefix = hashlib.sha256(good.read_bytes()).hexdigest()[:8]
    named = tmp_path / f"model-{prefix}.pth"
    good.rename(named)
    assert set(read_state_dict(named)) == {"a"}
    wrong = tmp_path / "model-00000000.pth"
    named.rename(wrong)
    with pytest.raises(WeightsError, match="damaged"):
        read_state_dict(wrong)


def test_the_offline_lite0_file_matches_its_name():
    path = get_spec("efficientnet_lite0").sources[0].locate()
    assert path is not None and "-" in os.path.basename(path)
    assert len(read_state_dict(path)) > 100  # verified, then read


def test_a_damaged_fashion_mnist_download_is_removed(tmp_path):
    f = tmp_path / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(b"not the file")
    with pytest.raises(DataError, match="damaged"):
        fashion_mnist._verify(f, fashion_mnist.MD5[f.name])
    assert not f.exists()


def _namespace(root, name, size, age_days):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "key.json").write_text(json.dumps({"backbone": name, "preprocessing": {"image_size": 64}}))
    (folder / "a.npy").write_bytes(b"x" * size)
    np.save(folder / "a.keys.npy", np.array([b"k1", b""], dtype="S32"))
    then = time.time() - age_days * 86400
    os.utime(folder / "key.json", (then, then))
    return folder


def test_eviction_removes_least_recently_used_namespaces_but_never_the_one_in_use(tmp_path):
    old, mid, new = (_namespace(tmp_path, n, 1000, age) for n, age in (("old", 30), ("mid", 10), ("new", 1)))
    assert [n["backbone"] for n in cache_module.namespaces(tmp_path)] == ["old", "mid", "new"]
    assert cache_module.namespaces(tmp_path)[0]["images"] == 1
    removed = cache_module.evict(tmp_path, keep=old, limit=2500)
    assert removed == [str(mid)] and old.exists() and new.exists()


def test_eviction_counts_the_check_facts_stores_and_removes_them_by_last_use(tmp_path):
    from headstart.data.facts_cache import FOLDER, FactsStore

    old_facts = FactsStore({"thumb_side": 32, "n": 1}, root=tmp_path).dir  # opened (used) now
    (old_facts / "x.thumbs.npy").write_bytes(b"x" * 1000)
    then = time.time() - 20 * 86400
    os.utime(old_facts / "settings.json", (then, then))  # last used 20 days ago
    old, new = _namespace(tmp_path, "old", 1000, 30), _namespace(tmp_path, "new", 1000, 1)
    assert [Path(s["dir"]) for s in cache_module.facts_stores(tmp_path)] == [old_facts]
    assert cache_module.evict(tmp_path, keep=new, limit=1200) == [str(old), str(old_facts)]
    assert new.exists() and not (tmp_path / FOLDER / old_facts.name).exists()
    reopened = FactsStore({"thumb_side": 32, "n": 2}, root=tmp_path).dir
    assert time.time() - cache_module.facts_stores(tmp_path)[0]["last_used"] < 60 and reopened.exists()


def test_a_shard_committed_by_another_process_while_the_cache_is_measured_is_not_an_error(tmp_path, monkeypatch):
    """torchrun's ranks share one cache: one lists a namespace's files while the other renames its finished shard
    (``.tmp`` -> ``.npy``) and evicts. The listing saw a name that no longer exists when it is measured."""
    folder = _namespace(tmp_path, "shared", 1000, 1)
    listed = list(folder.iterdir())
    path = type(folder)
    gone = folder / ".gone.npy.tmp"  # there when listed and checked, renamed before its size is read
    monkeypatch.setattr(path, "iterdir", lambda self: iter([*listed, gone]) if self == folder else iter([]))
    is_file = path.is_file
    monkeypatch.setattr(path, "is_file", lambda self: self == gone or is_file(self))
    [ns] = cache_module.namespaces(tmp_path)
    assert ns["bytes"] == sum(p.stat().st_size for p in listed)
    assert cache_module.evict(tmp_path, limit=0) == [str(folder)]


def test_cache_info_and_clear_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    _namespace(tmp_path, "one", 500, 2)
    _namespace(tmp_path, "two", 500, 1)
    assert main(["cache", "info", "--json"]) == 0
    assert [n["backbone"] for n in json.loads(capsys.readouterr().out)] == ["one", "two"]
    assert main(["cache", "clear", "one"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["two"]
    assert main(["cache", "clear"]) == 0 and list(tmp_path.iterdir()) == []


def test_the_cache_key_holds_the_library_versions():
    v = library_versions()
    assert v["torch"] == torch.__version__ and "timm" in v
