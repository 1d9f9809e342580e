"""An on-disk cache of frozen-backbone features: one row per image *content*, stored as memory-mapped ``.npy`` shards.

A cache namespace is one (backbone, weights, preprocessing, precision, view) combination; inside it, a feature row
is found by the hash of the image file's bytes (:func:`headstart.core.hashing.file_hash`, which says why not size
and mtime), not by its path. So a renamed or copied image is a hit, an edited one is a miss (and only that one is
recomputed), and two folders holding the same files share their features.

Layout of a namespace (``<root>/<key digest>/``)::

    key.json                 what the features were computed with
    <shard>.npy              float32 (rows, dim), written once, then only ever read through np.load(mmap_mode="r")
    <shard>.keys.npy         the content hash of each row ('' for a row left empty); written last, so a shard
                             without one is an interrupted write and is ignored
    <shard>.bad.json         images in that batch that could not be decoded, by content hash, with the reason

Writers never modify a committed file, so concurrent runs at worst compute the same rows twice. An extraction
commits a shard every 4,096 rows (:data:`headstart.features.extract.SHARD_ROWS`), so a stopped one keeps its work,
and torchrun's ranks each write their own shards into the one cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from headstart.core.errors import OutputError, UsageError
from headstart.core.hashing import key_digest
from headstart.core.io import cache_root, release_pages, write_bytes, write_npy
from headstart.data.facts_cache import FOLDER as FACTS_FOLDER

DEFAULT_LIMIT_GB = 20.0  # $HEADSTART_CACHE_MAX_GB; past it the least recently used namespaces are removed
_MISSING = -1


def feature_key(backbone: str, weights: str, preprocessing, precision: str, view: str = "eval") -> dict:
    """Everything a feature row depends on besides the image: backbone, its weights' digest
    (:func:`headstart.core.hashing.tensors_digest`), the library versions (:func:`library_versions`), preprocessing
    and the precision it ran in (bf16 and fp32 features differ in the third digit). Torch-free, so a cached run's
    key is found without loading it."""
    from headstart.core.preprocessing import Preprocessing

    return {"backbone": backbone, "weights": weights, **library_versions(),
            "preprocessing": dict(sorted(Preprocessing.of(preprocessing).to_dict().items())),
            "precision": precision, "view": view}


def library_versions() -> dict[str, str]:
    """The versions of what turns an image into features: torch and timm (a new release may change a kernel or an
    architecture's details), torchvision and Pillow (they decode and resize the pixels; Pillow-SIMD resizes
    differently under the same import name). Each module's own ``__version__`` (torch's and torchvision's with the
    build, e.g. ``+cpu``), read from its version file (:func:`module_version`), so the torch-free path gets the same."""
    out = {"torch": torch_version()}
    for key, module, file in (("torchvision", "torchvision", "version.py"), ("pillow", "PIL", "_version.py")):
        found = module_version(module, file)
        if found is not None:
            out[key] = found
    try:
        out["timm"] = version("timm")
    except PackageNotFoundError:
        pass
    return out


def torch_version() -> str:
    """``torch.__version__`` without importing torch (four seconds): the string its ``version.py`` sets."""
    return module_version("torch", "version.py")


def module_version(module: str, file: str) -> str | None:
    """``module.__version__`` without importing it: the string its version ``file`` (next to its ``__init__``)
    sets, read the same way whether or not it is imported, so both paths give one key; None when not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    try:
        text = Path(spec.origin).with_name(file).read_text()
        return re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", text, re.MULTILINE).group(1)
    except (AttributeError, TypeError, OSError):  # an unusual install: ask the module itself
        return importlib.import_module(module).__version__


class ShardWriter:
    """Appends feature rows to a new shard through plain file writes (no mapping, so memory stays flat)."""

    def __init__(self, cache: FeatureCache, rows: int, dim: int):
        self.cache, self.rows, self.dim = cache, rows, dim
        self.name = uuid.uuid4().hex[:16]
        self._tmp = cache.dir / f".{self.name}.npy.tmp"
        self._file = open(self._tmp, "wb")
        np.lib.format.write_array_header_1_0(self._file, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                          "fortran_order": False, "shape": (rows, dim)})
        self._file.truncate(self._file.tell() + rows * dim * 4)  # rows never written read back as zeros
        self._data_start = self._file.tell()
        self.keys = np.full(rows, "", dtype="S32")
        self.bad: dict[str, str] = {}

    def write(self, row: int, features: np.ndarray, keys: Sequence[str]) -> None:
        """Writes ``features`` (n, dim) at rows ``row .. row + n`` with their content hashes."""
        features = np.ascontiguousarray(features, dtype="<f4")
        assert features.shape == (len(keys), self.dim), (features.shape, len(keys), self.dim)
        self._file.seek(self._data_start + row * self.dim * 4)
        self._file.write(features.data)
        self.keys[row:row + len(keys)] = [k.encode() for k in keys]

    def mark_bad(self, key: str, reason: str) -> None:
        self.bad[key] = reason

    def commit(self) -> None:
        """Makes the shard visible: data file first, then its bad list, then its keys (the commit marker)."""
        self._file.close()
        final = self.cache.dir / f"{self.name}.npy"
        os.replace(self._tmp, final)
        if self.bad:
            write_bytes(self.cache.dir / f"{self.name}.bad.json", json.dumps(self.bad).encode())
        write_npy(self.cache.dir / f"{self.name}.keys.npy", self.keys)
        self.cache.refresh()
        evict(self.cache.dir.parent, keep=self.cache.dir)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class FeatureCache:
    """The features of one backbone + weights + preprocessing (+ precision, view), looked up by content hash.

    Args:
        key: what the features depend on; any JSON-serialisable dict (see :func:`headstart.features.extract.cache_key`).
        root: the cache folder; default :func:`cache_root`.
    """

    def __init__(self, key: dict, root: str | Path | None = None):
        self.key = key
        self.dir = self.folder(key, root)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the feature cache {self.dir} ({exc.strerror}); set HEADSTART_CACHE "
                                  "to a folder you can write to.") from None
        if not (self.dir / "key.json").exists():
            write_bytes(self.dir / "key.json", json.dumps(key, indent=1, sort_keys=True).encode())
        with contextlib.suppress(OSError):  # a read-only (shared) cache is still read
            os.utime(self.dir / "key.json")  # "last used", for eviction
        self.refresh()

    @staticmethod
    def folder(key: dict, root: str | Path | None = None) -> Path:
        """The namespace folder of ``key`` under ``root`` (default :func:`cache_root`)."""
        return Path(root or cache_root()) / key_digest(key, digest_size=10)

    @classmethod
    def existing(cls, key: dict, root: str | Path | None = None) -> FeatureCache | None:
        """The namespace of ``key`` when something has been computed into it before, else None (and nothing is
        created)."""
        return cls(key, root) if (cls.folder(key, root) / "key.json").is_file() else None

    def refresh(self) -> None:
        """Re-reads which shards exist (another process may have added some).

        The index is a sorted array of keys with their (shard, row), searched with ``np.searchsorted``: 48 bytes
        an image, where a dict of strings would take ~250.
        """
        self.shards: list[np.ndarray] = []
        self.bad: dict[str, str] = {}
        all_keys, all_loc = [], []
        for keys_file in sorted(self.dir.glob("*.keys.npy"), key=lambda p: p.stat().st_mtime_ns):
            name = keys_file.name.removesuffix(".keys.npy")
            try:
                data, keys = np.load(self.dir / f"{name}.npy", mmap_mode="r"), np.load(keys_file, allow_pickle=False)
            except (OSError, ValueError):  # deleted or damaged by hand: its images are simply computed again
                continue
            rows = np.flatnonzero(keys != b"")
            all_keys.append(keys[rows])
            all_loc.append(np.stack([np.full(len(rows), len(self.shards)), rows], axis=1))
            self.shards.append(data)
            bad_file = self.dir / f"{name}.bad.json"
            if bad_file.exists():
                self.bad.update(json.loads(bad_file.read_text()))
        keys = np.concatenate(all_keys) if all_keys else np.empty(0, dtype="S32")
        loc = np.concatenate(all_loc) if all_loc else np.empty((0, 2), dtype=np.int64)
        # A key written twice (two runs at once) is found in its latest shard.
        self._keys, last = np.unique(keys[::-1], return_index=True)
        self._loc = loc[::-1][last].astype(np.int64)

    def __contains__(self, key: str) -> bool:
        return key in self.bad or self.locate([key])[0, 0] != _MISSING

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[str]:
        """The content hash of every cached row, sorted."""
        return [k.decode() for k in self._keys]

    @property
    def dim(self) -> int | None:
        return self.shards[0].shape[1] if self.shards else None

    def writer(self, rows: int, dim: int) -> ShardWriter:
        return ShardWriter(self, rows, dim)

    def locate(self, keys: Sequence[str]) -> np.ndarray:
        """(n, 2) int64 array of (shard, row) for each key; (-1, -1) for keys not cached."""
        out = np.full((len(keys), 2), _MISSING, dtype=np.int64)
        if len(keys) and len(self._keys):
            query = np.asarray(keys, dtype="S32")
            at = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
            found = self._keys[at] == query
            out[found] = self._loc[at[found]]
        return out

    def read(self, keys: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """The feature rows of ``keys``, in order, into ``out`` (a new array by default).

        Only the rows asked for are read from the memory-mapped shards.
        """
        loc = self.locate(keys)
        if (loc[:, 0] == _MISSING).any():
            missing = [k for k, (s, _) in zip(keys, loc) if s == _MISSING][:3]
            raise KeyError(f"features not in the cache for content hash(es) {', '.join(missing)}")
        if out is None:
            out = np.empty((len(keys), self.dim or 0), dtype=np.float32)
        for shard in np.unique(loc[:, 0]):
            at = np.flatnonzero(loc[:, 0] == shard)
            rows = loc[at, 1]
            order = np.argsort(rows, kind="stable")  # ascending rows read the mapping front to back
            out[at[order]] = self.shards[shard][rows[order]]
            release_pages(self.shards[shard])
        return out

    def iter_read(self, keys: Sequence[str], chunk: int = 4096) -> Iterator[np.ndarray]:
        """Like :meth:`read`, ``chunk`` rows at a time: features of any number of images in bounded memory."""
        for start in range(0, len(keys), chunk):
            yield self.read(keys[start:start + chunk])


def size_limit() -> int:
    """The cache's size limit in bytes: ``$HEADSTART_CACHE_MAX_GB`` (default 20 GB)."""
    try:
        gb = float(os.environ.get("HEADSTART_CACHE_MAX_GB") or DEFAULT_LIMIT_GB)
    except ValueError:
        raise UsageError("HEADSTART_CACHE_MAX_GB must be a number of gigabytes, e.g. 20.") from None
    return int(gb * 1e9)


def namespaces(root: str | Path | None = None) -> list[dict]:
    """Every namespace under ``root``, least recently used first: its folder, what it was computed with, images,
    bytes and when it was last used."""
    root = Path(root or cache_root())
    out = []
    for key_file in root.glob("*/key.json") if root.is_dir() else []:
        folder = key_file.parent
        try:
            key, last_used = json.loads(key_file.read_text()), key_file.stat().st_mtime
        except (OSError, ValueError):  # removed meanwhile by another process's eviction, or damaged
            key, last_used = {}, 0.0
        images = 0
        for keys_file in folder.glob("*.keys.npy"):
            try:
                images += int((np.load(keys_file, allow_pickle=False) != b"").sum())
            except (OSError, ValueError):
                pass
        out.append({"dir": str(folder), "backbone": key.get("backbone"), "precision": key.get("precision"),
                    "image_size": (key.get("preprocessing") or {}).get("image_size"), "images": images,
                    "bytes": folder_bytes(folder), "last_used": last_used})
    return sorted(out, key=lambda n: n["last_used"])


def folder_bytes(folder: Path) -> int:
    """The size of the files under ``folder``, counting a file that another process renames or removes while it is
    counted (a rank committing its shard: ``.tmp`` -> ``.npy``) as nothing rather than failing."""
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def clear(root: str | Path | None = None, which: Sequence[str] | None = None) -> int:
    """Removes the namespaces named in ``which`` (folder names or paths), or all of them and the check's facts
    (:mod:`headstart.data.facts_cache`); returns the bytes freed."""
    freed = 0
    wanted = {Path(w).name for w in which} if which else None
    for ns in namespaces(root):
        if wanted is None or Path(ns["dir"]).name in wanted:
            shutil.rmtree(ns["dir"], ignore_errors=True)
            freed += ns["bytes"]
    if wanted is None:
        facts = Path(root or cache_root()) / FACTS_FOLDER
        freed += folder_bytes(facts)
        shutil.rmtree(facts, ignore_errors=True)
    return freed


def facts_stores(root: str | Path | None = None) -> list[dict]:
    """The check's facts stores (:mod:`headstart.data.facts_cache`, one per set of check settings): folder, bytes
    and when last used (a store marks its ``settings.json`` each time it is opened)."""
    out = []
    for settings in (Path(root or cache_root()) / FACTS_FOLDER).glob("*/settings.json"):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another process
            out.append({"dir": str(settings.parent), "bytes": folder_bytes(settings.parent),
                        "last_used": settings.stat().st_mtime})
    return out


def evict(root: str | Path | None = None, keep: Path | None = None, limit: int | None = None) -> list[str]:
    """Removes whole namespaces and facts stores (together they make the cache's size), least recently used first,
    until the cache fits ``limit`` (default :func:`size_limit`); never ``keep`` (the one in use). Returns the
    folders removed."""
    limit = size_limit() if limit is None else limit
    spaces = sorted(namespaces(root) + facts_stores(root), key=lambda n: n["last_used"])
    total = sum(n["bytes"] for n in spaces)
    removed = []
    for ns in spaces:
        if total <= limit:
            break
        if keep is not None and Path(ns["dir"]) == Path(keep):
            continue
        shutil.rmtree(ns["dir"], ignore_errors=True)
        total -= ns["bytes"]
        removed.append(ns["dir"])
    return removed


# -- measured extraction speeds (headstart.features.speed), read here without torch for `headstart models` -------

SPEEDS = "speeds.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), without torch: the listing matches figures to this machine by it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def remembered_speeds(root: str | Path | None = None) -> list[dict]:
    """Every measured figure: the conditions and ``img_per_s`` (empty when none or unreadable)."""
    path = Path(root or cache_root()) / SPEEDS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in data if isinstance(r, dict) and "img_per_s" in r] if isinstance(data, list) else []
