"""Images that live inside a bigger file: members of WebDataset tar shards and rows of a Hugging Face dataset.

A hundred thousand images are easier to move as a hundred tar shards than as a hundred thousand files, and many
teams keep theirs as a ``datasets`` folder. headstart reads both in place, through the same sample interface as
image files: a *member path* ``<container>::<inner>`` stands for the image, where ``<inner>`` is the member's name
in a tar shard (``/data/shard-000003.tar::000123.jpg``) or ``<split>/<row>`` in a dataset written by
``Dataset.save_to_disk`` or held as Parquet files (``/data/parts::train/4711``). :func:`read_bytes` gives its
bytes, :func:`stat_path` the stat of its container; so the content hash (the feature cache's key) is the hash of
the image's own encoded bytes, the same whether it sits in a folder, a shard or a dataset row, and a cached hash
stays valid while the container is unchanged.

Tar shards are read by seeking to each member (an index of offsets is built once per shard, one pass over its
headers), so they must be uncompressed, as WebDataset writes them; a compressed one is refused with what to do.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

from headstart.core.errors import DataError

SEP = "::"
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
_KEEP = 256  # containers whose index stays in memory (a tar index is ~150 bytes a member)
_lock = threading.Lock()
_indexes: OrderedDict[tuple, object] = OrderedDict()


def is_member(path: str | os.PathLike) -> bool:
    return SEP in os.fspath(path)


def split_member(path: str | os.PathLike) -> tuple[str, str]:
    """``(container, inner)`` of a member path."""
    container, _, inner = os.fspath(path).partition(SEP)
    return container, inner


def member_path(container: str | os.PathLike, inner: str) -> str:
    return f"{os.path.abspath(container)}{SEP}{inner}"


def stat_path(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` of a file, or of the container of a member path (its content changes only with it)."""
    return os.stat(split_member(path)[0] if is_member(path) else path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file or of a member path.

    Raises:
        OSError: the file, the container or the member cannot be read (``FileNotFoundError`` for a member the
            container does not hold).
    """
    if not is_member(path):
        return Path(path).read_bytes()
    container, inner = split_member(path)
    if is_dataset_dir(container) or container.endswith(".parquet"):
        return _dataset_bytes(container, inner)
    offset, size = tar_index(container)["members"].get(inner, (None, 0))
    if offset is None:
        raise FileNotFoundError(2, f"no member {inner} in {container}", path)
    with open(container, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _cached(key: tuple, build):
    """``build()`` once per key (container and its stat), the last :data:`_KEEP` kept; built under a lock so that
    threads decoding the same shard index it once."""
    with _lock:
        if key in _indexes:
            _indexes.move_to_end(key)
            return _indexes[key]
        value = build()
        _indexes[key] = value
        while len(_indexes) > _KEEP:
            _indexes.popitem(last=False)
        return value


def _stamp(path: str) -> tuple:
    s = os.stat(path)
    return os.path.abspath(path), s.st_ino, s.st_size, s.st_mtime_ns


def tar_index(path: str) -> dict:
    """``{"members": {name: (offset, size)}, "cls": {key: text}}`` of an uncompressed tar: where each file's bytes
    are, and the text of each ``<key>.cls`` member (WebDataset's class label)."""
    return _cached(("tar", *_stamp(path)), lambda: _read_tar_index(path))


def _read_tar_index(path: str) -> dict:
    members, labels = {}, {}
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only, so every member can be read by seeking
            for m in tar:
                if not m.isfile():
                    continue
                members[m.name] = (m.offset_data, m.size)
                if m.name.endswith(".cls"):
                    labels[sample_key(m.name)] = tar.extractfile(m).read().decode("utf-8", "replace").strip()
    except tarfile.ReadError as exc:
        raise DataError(f"{path} is not an uncompressed tar file ({exc}); WebDataset shards are plain .tar files: "
                        "decompress it first (e.g. gunzip) or pass a folder of images.") from None
    return {"members": members, "cls": labels}


def sample_key(name: str) -> str:
    """WebDataset's sample key of a member name: the name up to the first dot of its last part
    (``a/000123.seg.png`` -> ``a/000123``)."""
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


# -- Hugging Face datasets ------------------------------------------------------------------------------------------

def is_dataset_dir(path: str | os.PathLike) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a folder of Parquet files."""
    p = Path(path)
    return p.is_dir() and (any((p / m).is_file() for m in HF_MARKERS) or any(p.glob("*.parquet")))


def load_dataset_splits(path: str) -> dict:
    """``{split: datasets.Dataset}`` of a dataset folder or Parquet file (one split, ``train``, when it has none),
    memory-mapped: rows are read as asked for."""
    return _cached(("hf", *_stamp(path)), lambda: _load_dataset_splits(path))


def _load_dataset_splits(path: str) -> dict:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a Hugging Face dataset, and reading one needs the datasets package: "
                        "pip install datasets") from None
    p = Path(path)
    if p.is_dir() and any((p / m).is_file() for m in HF_MARKERS):
        loaded = datasets.load_from_disk(str(p))
    else:
        files = [str(p)] if p.is_file() else sorted(map(str, p.glob("*.parquet")))
        loaded = datasets.Dataset.from_parquet(files)
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def image_column(dataset) -> str:
    """The dataset's image column: the first of type ``datasets.Image``."""
    import datasets

    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise DataError(f"the dataset has no image column (its columns: {', '.join(dataset.features)}); headstart "
                    "reads datasets whose images are a datasets.Image feature.")


def _dataset_bytes(container: str, inner: str) -> bytes:
    split, _, row = inner.rpartition("/")
    try:
        dataset = load_dataset_splits(container)[split]
        cell = dataset.data.column(image_column(dataset))[int(row)].as_py()
    except (KeyError, IndexError, ValueError):
        raise FileNotFoundError(2, f"no row {inner} in {container}", container) from None
    if cell.get("bytes"):
        return cell["bytes"]
    if cell.get("path"):  # a dataset that keeps its images as files beside it
        return Path(cell["path"]).read_bytes()
    raise FileNotFoundError(2, f"row {inner} of {container} holds no image", container)
