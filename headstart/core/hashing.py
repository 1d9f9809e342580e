"""Every digest headstart computes: of an image file's content, of a downloaded or exported file, of a set of tensors
and of a cache key. Their values are on users' disks (the feature cache is keyed by :func:`file_hash` and
:func:`tensors_digest`, run configs hold :func:`weights_checksum`), so they never change; tests pin them.

An image's content hash is the blake2b-128 of its bytes, not its size and mtime: mtime survives ``cp -p``,
``rsync -t``, archive extraction and many sync tools that change content, and a wrong feature-cache hit would silently
train on another image's features. blake2b runs at about 1 GB/s per core, so hashing a 100 kB JPEG costs ~0.1 ms
against ~2 ms to decode it; still, each image is hashed once per command: :class:`KnownHashes` keeps the hashes the
check computed, and a file's stat says whether its bytes may have changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headstart.core import archives

if TYPE_CHECKING:
    import torch

_BLOCK = 1 << 20  # bytes read at a time
# A file changed this recently may change again within the same timestamp tick, unseen by its stat (git's "racy
# clean" case): its hash is not kept. 2 s covers the coarsest common timestamps (FAT's); ext4's are ~4 ms.
RACY_NS = 2_000_000_000


def _digest_file(path: str | Path, h):
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h


def file_hash(path: str | Path, data: bytes | None = None) -> str:
    """An image's content hash: blake2b-128 of the file's bytes, as hex. Every content hash goes through here.

    Args:
        path: the file.
        data: its bytes, when the caller has read them already (the check decodes the same bytes).

    A member of a tar shard or a dataset row (:mod:`headstart.core.archives`) is hashed by its own bytes, so an
    image keeps its hash, and its cached features, whether it sits in a folder, a shard or a dataset.
    """
    if data is None and archives.is_member(path):
        data = archives.read_bytes(path)
    if data is not None:
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    return _digest_file(path, hashlib.blake2b(digest_size=16)).hexdigest()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """A file's digest with a named ``hashlib`` algorithm, as hex, read in blocks: checksums that other tools
    compute too (an exported model's SHA-256, a download's MD5, a torch hub file name's SHA-256 prefix)."""
    return _digest_file(path, hashlib.new(algorithm)).hexdigest()


def key_digest(key, digest_size: int) -> str:
    """blake2b of a JSON-serialisable key (keys sorted; values JSON cannot write as their ``str``), as hex: the name of
    a cache folder or file that holds what was made from ``key``."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=digest_size).hexdigest()


def _raw_bytes(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor's (or array's) elements as little-endian bytes, a flat uint8 array (torch's own layout)."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
    import torch  # a tensor means torch is loaded; the cached path hashes numpy arrays without it

    return value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _dtype_name(value: torch.Tensor | np.ndarray) -> str:
    return f"torch.{value.dtype.name}" if isinstance(value, np.ndarray) else str(value.dtype)


def tensors_digest(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """blake2b-128 over each tensor's ``name:dtype:shape;`` and bytes, in name order: what a set of weights is.

    Torch tensors (a module's ``state_dict()`` as it is now) and numpy arrays (a safetensors file read with
    ``safetensors.numpy``, so without torch) give the same digest to the bit; memory format (channels-last) does not
    change it. The feature cache is keyed by the backbone's, rather than by the checksum of the file the weights came
    from: a fine-tuned run records the pretrained checksum in its config but holds different backbone weights.
    Hashing the 13 MB of EfficientNet-Lite0 takes ~20 ms.
    """
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        value = tensors[name]
        h.update(f"{name}:{_dtype_name(value)}:{tuple(value.shape)};".encode())
        data = _raw_bytes(value)
        h.update(data.data if data.size else b"")
    return h.hexdigest()


def weights_checksum(state_dict: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """The first 16 hex digits of a SHA-256 over each tensor's name and bytes, in name order: the
    ``weights_checksum`` a run's config records for the pretrained weights it started from (names and bytes only,
    unlike :func:`tensors_digest`; kept so that configs old and new compare)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        data = _raw_bytes(state_dict[name])
        h.update(name.encode())
        h.update(data.tobytes() if data.size else b"")
    return h.hexdigest()[:16]


# --- Content hashes of many files, each computed once per command ---

def _stat(path: str) -> tuple[int, ...] | None:
    """(device, inode, size, mtime, ctime) of a file (of its container for a member path); None when it cannot be
    read. The kernel sets ctime on every
    write and rename, and no tool can set it back."""
    try:
        s = archives.stat_path(path)
    except OSError:
        return None
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns


def _steadily(path: str, read):
    """``(read(), stamp)``: the stamp :class:`KnownHashes` keeps for what ``read`` read of ``path``, or None when the
    file changed meanwhile or less than :data:`RACY_NS` before."""
    started = time.time_ns()
    before = _stat(path)
    out = read()
    if before is None or before != _stat(path) or started - max(before[3], before[4]) < RACY_NS:
        return out, None
    return out, hash(before)


def read_stamped(path: str) -> tuple[bytes, int | None]:
    """The file's bytes and their stamp, for a caller that needs the bytes themselves and hashes them with
    :func:`file_hash` (``check``, which decodes them)."""
    return _steadily(path, lambda: archives.read_bytes(path))


class KnownHashes:
    """The content hashes a command has computed, by path, each with a stamp of its file's stat at the read.

    ``check`` hashes every image as it decodes it; this book carries those hashes (with the splits:
    ``DataSplits.hashes``) to feature extraction, validation, the refit, the test and the report, which hash only
    files nobody hashed yet, and add them. A linear-probe ``train`` used to hash each validation image five times.

    A file whose bytes change after they were hashed: its hash is reused only while a new ``os.stat`` gives the same
    device, inode, size, mtime and ctime as just before and just after the read that hashed it. Any write or
    rename-over changes ctime (or the inode; on Windows, where ctime is the creation time, mtime), so the file is
    hashed again, and features are never stored under the hash of other bytes. A second change within the
    timestamp tick of the file's previous one would not show, so a file changed less than :data:`RACY_NS` before
    it was read is not kept (it is hashed again where next needed).
    One stat per reuse: ~2 us against ~0.1 ms to read and hash a 100 kB image.
    """

    def __init__(self):
        self._known: dict[str, tuple[str, int]] = {}  # ~250 bytes an image

    @staticmethod
    def _key(path: str) -> str:
        # split.json holds absolute paths, the samples hold them as found; absolute ones are kept as they are, so
        # the book shares its strings with the samples.
        return path if os.path.isabs(path) else os.path.abspath(path)

    def add(self, path: str, digest: str, stamp: int | None) -> None:
        """Remembers ``path``'s hash with the stamp of the read that gave it; a None stamp forgets it."""
        if stamp is None:
            self._known.pop(self._key(path), None)
        else:
            self._known[self._key(path)] = (digest, stamp)

    def get(self, path: str) -> str | None:
        """The hash of ``path`` when it is known and the file's stat has not changed since; else None."""
        entry = self._known.get(self._key(path))
        if entry is None:
            return None
        now = _stat(path)
        return entry[0] if now is not None and hash(now) == entry[1] else None

    def __len__(self) -> int:
        return len(self._known)


def _try_hash(path: str, known: KnownHashes | None) -> str | OSError:
    if known is not None and (digest := known.get(path)) is not None:
        return digest
    try:
        if known is None:
            return file_hash(path)
        digest, stamp = _steadily(path, lambda: file_hash(path))
    except OSError as exc:
        return exc
    known.add(path, digest, stamp)
    return digest


def _hash_all(paths: Sequence[str], known: KnownHashes | None) -> list[str | OSError]:
    return [_try_hash(p, known) for p in paths]


def content_hashes(paths: Sequence[str], known: KnownHashes | None = None, workers: int = 8,
                   chunk: int = 256) -> list[str | OSError]:
    """The content hash of each file (:func:`file_hash`), or the ``OSError`` that stopped reading it.

    Args:
        paths: the files.
        known: hashes already computed in this command: those still valid are taken from it, the others computed
            and added to it.
        workers: threads reading and hashing (hashlib and file reads release the GIL).
        chunk: files per thread-pool task.
    """
    if len(paths) <= chunk:
        return _hash_all(paths, known)
    # One task per chunk of files: a future per file would cost ~1 kB each, held until the last one is done.
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda part: _hash_all(part, known), [paths[i:i + chunk] for i in range(0, len(paths), chunk)])
        return [h for part in parts for h in part]
