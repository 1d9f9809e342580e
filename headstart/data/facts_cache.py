"""What ``check`` found in each image, kept by content hash, so a second check (and every ``train``, which checks
first) decodes only the images it has not seen, and an interrupted check resumes where it stopped.

At 100,000 images the decode is most of a check's time; reading and hashing the bytes is a small part of it. A
file whose content hash is in the store gets its facts from there: format, mode, transparency, EXIF orientation,
perceptual hash and the 32x32 thumbnail, all functions of the bytes alone for a given Pillow, imagehash, pixel
limit and check settings, which name the store's folder (a change of any of them starts a new store). Files that
could not be used are not kept: they are decoded again and named again.

Layout, under ``<feature cache root>/facts/<digest of the settings>/`` (``$HEADSTART_CACHE``)::

    settings.json           what the facts depend on
    <shard>.thumbs.npy      uint8 (rows, 1024): the thumbnails
    <shard>.facts.npy       a structured row per image (content hash, perceptual hash, format, mode, flags),
                            written last: a shard without it is an interrupted write and is ignored

A shard is written every :data:`SHARD_ROWS` new images, as the check goes, so a check stopped midway keeps them.
torchrun's ranks each write their own shards. Reading is by memory map; the pages read are released at once.
A store counts in the cache's size (``$HEADSTART_CACHE_MAX_GB``) and is evicted with the feature namespaces, least
recently used first (:func:`headstart.features.cache.evict`).
"""

from __future__ import annotations

import json
import os
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from headstart.core.hashing import key_digest
from headstart.core.io import cache_root, release_pages, write_bytes, write_npy

SHARD_ROWS = 4096
FOLDER = "facts"  # under the feature cache's root
FORMAT = 1  # of this store's files
ROW = np.dtype([("sha", "S64"), ("phash", "<u8"), ("format", "S12"), ("mode", "S12"), ("orientation", "u1"),
                ("transparency", "?"), ("phash_ok", "?")])


def settings(max_pixels: int, draft: int, thumb_side: int) -> dict:
    """What a stored fact depends on besides the bytes."""
    out = {"format": FORMAT, "max_pixels": max_pixels, "draft": draft, "thumb_side": thumb_side}
    for package in ("pillow", "imagehash"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


class FactsStore:
    """The stored facts of one set of :func:`settings`, looked up by content hash.

    Args:
        key: :func:`settings`.
        root: the feature cache root (default ``$HEADSTART_CACHE`` or ``~/.cache/headstart/features``).
    """

    def __init__(self, key: dict, root: str | Path | None = None):
        self.dir = Path(root or cache_root()) / FOLDER / key_digest(key, digest_size=10)
        self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / "settings.json").exists():
                write_bytes(self.dir / "settings.json", json.dumps(key, indent=1, sort_keys=True).encode())
            os.utime(self.dir / "settings.json")  # last used now: the cache's eviction removes the least recent
        except OSError:  # a read-only cache: the check runs as before, decoding every image
            self.writable = False
        self.thumb_bytes = key["thumb_side"] ** 2
        self._load()
        self._pending: list[tuple[np.void, bytes]] = []

    def _load(self) -> None:
        self._rows, self._thumbs = [], []
        keys, where = [], []
        for facts_file in sorted(self.dir.glob("*.facts.npy")) if self.dir.is_dir() else []:
            name = facts_file.name.removesuffix(".facts.npy")
            try:
                rows = np.load(facts_file, allow_pickle=False)
                thumbs = np.load(self.dir / f"{name}.thumbs.npy", mmap_mode="r")
            except (OSError, ValueError):  # damaged or removed by hand: those images are decoded again
                continue
            if rows.dtype != ROW or thumbs.shape != (len(rows), self.thumb_bytes):
                continue
            keys.append(rows["sha"])
            where.append(np.stack([np.full(len(rows), len(self._rows)), np.arange(len(rows))], axis=1))
            self._rows.append(rows)
            self._thumbs.append(thumbs)
        keys = np.concatenate(keys) if keys else np.empty(0, "S64")
        where = np.concatenate(where) if where else np.empty((0, 2), np.int64)
        self._keys, first = np.unique(keys, return_index=True)
        self._where = where[first]

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, sha: str) -> tuple[np.void, bytes] | None:
        """The stored row and thumbnail of ``sha``, or None. Safe from several threads (it only reads)."""
        if not len(self._keys):
            return None
        query = np.bytes_(sha)
        at = min(int(np.searchsorted(self._keys, query)), len(self._keys) - 1)
        if self._keys[at] != query:
            return None
        shard, row = self._where[at]
        return self._rows[shard][row], bytes(self._thumbs[shard][row])

    def add(self, facts) -> None:
        """Keeps one image's facts (:class:`headstart.data.check.FileFacts`, read by the names of :data:`ROW` and
        ``thumb``); written with the next full shard, or by :meth:`flush`. Main thread only."""
        if not self.writable or len(facts.thumb) != self.thumb_bytes:
            return
        row = np.array((facts.sha.encode(), facts.phash, (facts.format or "").encode(), facts.mode.encode(),
                        facts.orientation, facts.transparency, facts.phash_ok), dtype=ROW)
        self._pending.append((row, facts.thumb))
        if len(self._pending) >= SHARD_ROWS:
            self.flush()

    def flush(self) -> None:
        """Writes the facts kept since the last shard: thumbnails first, then the rows (the commit marker)."""
        pending, self._pending = self._pending, []
        if not pending or not self.writable:
            return
        name = uuid.uuid4().hex[:16]
        rows = np.array([r for r, _ in pending], dtype=ROW)
        thumbs = np.frombuffer(b"".join(t for _, t in pending), np.uint8).reshape(len(pending), self.thumb_bytes)
        try:
            write_npy(self.dir / f"{name}.thumbs.npy", thumbs)
            write_npy(self.dir / f"{name}.facts.npy", rows)
        except OSError:  # a full or read-only disk: the facts are simply found again next time
            self.writable = False

    def release(self) -> None:
        """Unmaps the thumbnail pages read so far (they count in the process's resident memory while mapped)."""
        for thumbs in self._thumbs:
            release_pages(thumbs)

