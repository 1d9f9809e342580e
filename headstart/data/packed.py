"""Labelled images packed in bigger files: WebDataset tar shards and Hugging Face datasets, as samples.

Each image becomes a member path (:mod:`headstart.core.archives`), so everything after discovery (the check, the
feature cache, training, evaluate, predict) reads it as it reads a file.

- WebDataset shards: ``shard-{000000..000009}.tar`` (a brace pattern, expanded as WebDataset expands it) or one
  ``.tar``; each sample is a ``<key>.jpg`` (or ``.png``, any image extension) with a ``<key>.cls`` holding its class
  name or index. Shards carry no split: validation is made from them, as from one folder of class folders.
- A Hugging Face dataset: a folder written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose
  ``train``/``validation``/``test`` splits are used as given), or Parquet files; the images are its
  ``datasets.Image`` column, the labels its ``ClassLabel`` column (or a column named ``label``). An imagefolder
  dataset on disk is a folder of class folders, which headstart reads directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from braceexpand import braceexpand

from headstart.core import archives
from headstart.core.errors import DataError, PathNotFoundError
from headstart.data.images import is_image_file

LABEL_COLUMNS = ("label", "labels", "class", "category")


def is_shards(data: str | os.PathLike) -> bool:
    """A tar shard, or a brace pattern of them (``shard-{000000..000009}.tar``)."""
    text = os.fspath(data)
    return text.lower().endswith(".tar") or ("{" in text and ".." in text and ".tar" in text.lower())


def is_packed(data: str | os.PathLike) -> bool:
    """Tar shards or a Hugging Face dataset (folder or Parquet file)."""
    return is_shards(data) or archives.is_dataset_dir(data) or os.fspath(data).lower().endswith(".parquet")


def shard_files(pattern: str) -> list[str]:
    """The shards a pattern names, each checked to exist."""
    files = list(braceexpand(pattern))
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise PathNotFoundError(f"{len(missing)} of the {len(files)} shard(s) {pattern} names do not exist (first: "
                                f"{missing[0]}); check the pattern's numbers, e.g. shard-{{000000..000009}}.tar.")
    return files


def _images_by_key(members: dict) -> dict[str, str]:
    """sample key -> the name of its image member (the first with an image extension)."""
    out = {}
    for name in members:
        if is_image_file(name):
            out.setdefault(archives.sample_key(name), name)
    return out


def read_shards(pattern: str) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """Classes and ``{"train": [(member path, class name)]}`` of WebDataset shards (see the module docstring)."""
    rows, unlabelled = [], 0
    for shard in shard_files(pattern):
        index = archives.tar_index(shard)
        for key, name in _images_by_key(index["members"]).items():
            if key in index["cls"]:
                rows.append((archives.member_path(shard, name), index["cls"][key]))
            else:
                unlabelled += 1
    if unlabelled:
        raise DataError(f"{unlabelled} image(s) in {pattern} have no <key>.cls member with their class; each sample "
                        "needs one (its class name or index), as WebDataset's classification shards have.")
    if not rows:
        raise DataError(f"{pattern} holds no images (looked for <key>.jpg, <key>.png... members beside <key>.cls).")
    return _classes_of([y for _, y in rows]), {"train": rows, "val": [], "test": []}


def _classes_of(labels: list[str]) -> list[str]:
    """Distinct labels, in numeric order when they are all class indices, else alphabetical."""
    distinct = set(labels)
    if all(s.lstrip("-").isdigit() for s in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def read_dataset(path: str) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """Classes and ``{split: [(member path, class name)]}`` of a Hugging Face dataset (see the module docstring)."""
    from headstart.data.sources import SPLIT_DIRS

    splits = archives.load_dataset_splits(path)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    classes: list[str] | None = None
    for name, dataset in splits.items():
        split = next((s for s, names in SPLIT_DIRS.items() if name.lower() in names), None)
        if split is None:
            continue
        names, labels = _labels(dataset, path)
        classes = classes or names
        rows[split] += [(archives.member_path(path, f"{name}/{i}"), y) for i, y in enumerate(labels)]
    if not rows["train"]:
        raise DataError(f"{path} has no train split (its splits: {', '.join(splits)}); headstart trains on 'train'.")
    return classes or _classes_of([y for s in rows.values() for _, y in s]), rows


def _labels(dataset, path: str) -> tuple[list[str] | None, list[str]]:
    """(class names when the column is a ClassLabel, else None; each row's class name)."""
    import datasets

    archives.image_column(dataset)  # refuses a dataset without images before its labels are read
    features = dataset.features
    column = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    column = column or next((n for n in LABEL_COLUMNS if n in features), None)
    if column is None:
        raise DataError(f"{path} has no label column (a ClassLabel, or one named {', '.join(LABEL_COLUMNS)}); its "
                        f"columns: {', '.join(features)}.")
    values = dataset.data.column(column).to_pylist()
    if isinstance(features[column], datasets.ClassLabel):
        names = features[column].names
        return names, [names[v] for v in values]
    return None, [str(v) for v in values]


def read_packed(data: str) -> tuple[list[str], dict[str, list[tuple[str, str]]], str]:
    """``(classes, rows by split, layout)`` of tar shards or a dataset, for :func:`headstart.data.sources.discover`."""
    if is_shards(data):
        return (*read_shards(data), f"webdataset shards {data}")
    return (*read_dataset(str(Path(data).resolve())), f"hugging face dataset {data}")


def image_members(data: str) -> list[str]:
    """Every image in tar shards or a dataset, labelled or not, as member paths (for ``predict``)."""
    if not is_shards(data):
        path = str(Path(data).resolve())
        return [archives.member_path(path, f"{name}/{i}")
                for name, dataset in archives.load_dataset_splits(path).items() for i in range(len(dataset))]
    out = []
    for shard in shard_files(data):
        names = _images_by_key(archives.tar_index(shard)["members"]).values()
        out += [archives.member_path(shard, name) for name in names]
    return out


def labelled_samples(data: str, classes: list[str]) -> list[tuple[str, int]]:
    """Every labelled image of tar shards or a dataset (all its splits), as ``(member path, index in classes)``,
    for scoring a run whose classes are ``classes`` (``evaluate``)."""
    _, rows, _ = read_packed(data)
    found = [s for split in rows.values() for s in split]
    unknown = sorted({y for _, y in found} - set(classes))
    if unknown:
        raise DataError(f"{data} has classes the model was not trained on: {', '.join(unknown[:10])}. "
                        f"The model knows: {', '.join(classes)}.")
    idx = {c: i for i, c in enumerate(classes)}
    return [(p, idx[y]) for p, y in found]
