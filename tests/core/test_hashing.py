"""Every digest, pinned: the feature cache on users' disks is keyed by them (values computed with the code before
``headstart.core.hashing`` held it). And the book of known content hashes: reused while a file is unchanged, never
after it changed."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from headstart.core import hashing
from headstart.core.hashing import (
    KnownHashes,
    content_hashes,
    file_digest,
    file_hash,
    key_digest,
    read_stamped,
    tensors_digest,
    weights_checksum,
)

SMALL = bytes(range(256)) * 5 + b"headstart"
ARRAYS = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2, 3], dtype=np.int64),
          "e": np.zeros((0, 4), dtype=np.float32), "h": np.array([0.5, 1.5], dtype=np.float16)}


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(SMALL)
    return path


def test_file_digests_keep_their_values(small_file):
    assert file_hash(small_file) == file_hash(small_file, SMALL) == "404b7bf9d97d600f30f98d0fcb95be1d"
    assert file_digest(small_file) == "52dd0affa77c484f5aa8fb252aa34a39fbfbc2bb773684b2061c653bea9eba1d"
    assert file_digest(small_file, "md5") == hashlib.md5(SMALL).hexdigest()


def test_tensor_digests_keep_their_values_from_numpy_and_torch():
    tensors = {k: torch.from_numpy(v.copy()) for k, v in ARRAYS.items()}
    assert tensors_digest(ARRAYS) == tensors_digest(tensors) == "f5f7bf99c1f5172b82d21778091b6bea"
    assert weights_checksum(tensors) == weights_checksum(ARRAYS) == "b09ac4285432ba15"
    channels_last = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert tensors_digest({"w": channels_last}) == tensors_digest({"w": channels_last.to(
        memory_format=torch.channels_last)})
    big_endian = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in ARRAYS.items()}
    assert tensors_digest(big_endian) == tensors_digest(ARRAYS)


def test_key_digest_keeps_its_value():
    assert key_digest({"n": 1, "backbone": "x"}, digest_size=10) == "1e981d18f8b9ed7dd95c"


def test_content_hashes_in_chunks_and_with_unreadable_files(tmp_path):
    paths = []
    for i in range(7):
        paths.append(str(tmp_path / f"{i}.bin"))
        (tmp_path / f"{i}.bin").write_bytes(bytes([i]) * 100)
    paths.append(str(tmp_path / "missing.bin"))
    hashes = content_hashes(paths, workers=2, chunk=3)
    assert hashes[:7] == [file_hash(p) for p in paths[:7]] and isinstance(hashes[7], FileNotFoundError)


def _count_hashes(monkeypatch) -> list[str]:
    calls = []
    real = hashing.file_hash

    def counted(path, data=None):
        calls.append(str(path))
        return real(path, data)

    monkeypatch.setattr(hashing, "file_hash", counted)
    return calls


def test_known_hashes_are_reused_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "RACY_NS", 0)  # these files were written just now; see the next test
    a, b = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    (tmp_path / "a.bin").write_bytes(b"one")
    (tmp_path / "b.bin").write_bytes(b"two")
    known = KnownHashes()
    data, stamp = read_stamped(a)
    known.add(a, file_hash(a, data), stamp)
    calls = _count_hashes(monkeypatch)
    first = content_hashes([a, b], known)
    assert calls == [b] and len(known) == 2  # a came from the book; b was hashed and added
    assert content_hashes([a, b], known) == first and calls == [b]
    # Replaced (a new inode, as rsync and editors do) and grown: both are hashed again, never taken from the book.
    (tmp_path / "new").write_bytes(b"ONE")
    os.replace(tmp_path / "new", a)
    (tmp_path / "b.bin").write_bytes(b"two, longer")
    assert content_hashes([a, b], known) == [hashlib.blake2b(x, digest_size=16).hexdigest()
                                             for x in (b"ONE", b"two, longer")]
    assert calls == [b, a, b]


def test_a_file_changed_just_before_it_was_read_is_not_kept(tmp_path):
    """Its next change could fall within the same timestamp tick and leave its stat as it was."""
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"new")
    _, stamp = read_stamped(str(path))
    assert stamp is None
    known = KnownHashes()
    content_hashes([str(path)], known)
    assert len(known) == 0
