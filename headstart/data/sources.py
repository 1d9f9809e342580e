"""Finding the labelled images: ImageFolder layouts or a CSV manifest, and a seeded stratified split."""

from __future__ import annotations

import csv
import os
import random
import stat
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from headstart.core.errors import DataError, PathNotFoundError, UsageError
from headstart.core.hashing import KnownHashes
from headstart.data.images import is_image_file
from headstart.data.packed import image_members, is_packed, read_packed

Sample = tuple[str, int]  # (path, class index)
SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


@dataclass
class DataSplits:
    """Where every image went. ``layout`` says how the split was found, for the run's records; ``val_made`` whether
    headstart made the validation split (so it may make it again, e.g. to keep duplicates on one side); ``hashes``
    the images' content hashes computed so far (by the check), so that each image is read and hashed once per command
    (not written to ``split.json``)."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    layout: str = ""
    val_made: bool = False
    hashes: KnownHashes = field(default_factory=KnownHashes, repr=False, compare=False)

    def counts(self, split: str = "train") -> dict[str, int]:
        c = Counter(label for _, label in getattr(self, split))
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def to_json(self) -> dict:
        """Absolute paths (``os.path.abspath``: symlinks kept), so the record holds from any working folder."""
        return {"classes": self.classes, "layout": self.layout, "val_made": self.val_made,
                **{s: [[os.path.abspath(p), self.classes[y]] for p, y in getattr(self, s)]
                   for s in ("train", "val", "test")}}

    @classmethod
    def from_json(cls, d: dict) -> "DataSplits":
        """Reads ``to_json``'s record; older ones (relative paths, no ``val_made``) load as they were written."""
        idx = {c: i for i, c in enumerate(d["classes"])}
        return cls(d["classes"], *([(p, idx[y]) for p, y in d[s]] for s in ("train", "val", "test")),
                   layout=d["layout"], val_made=d.get("val_made", False))


def list_images(folder: Path, passed: list[str] | None = None) -> list[str]:
    """Image files below ``folder`` (recursively), in a stable order.

    Only files: a pipe, socket or device named like an image is left out, because reading it would wait forever or
    never end (a link that leads nowhere is kept, and fails as unreadable where it is read). With ``passed``, the
    other files found there (not hidden ones) are added to it, for the caller to say what it left out.
    """
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = str(Path(root) / name)
            if is_image_file(name) and not _is_special(path):
                out.append(path)
            elif passed is not None and not name.startswith("."):
                passed.append(path)
    return out


def _is_special(path: str) -> bool:
    """A pipe, socket or device: something that exists and is not a file (or a folder)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def expand_paths(paths: list[str | Path]) -> list[str]:
    """Files as given, folders expanded recursively to their image files. What a folder holds besides them is said
    on stderr (how many files, of which kinds), since a file named directly would be tried whatever its name."""
    out, passed = [], []
    for p in map(Path, paths):
        if is_packed(p):
            out += image_members(str(p))
        elif p.is_dir():
            found = list_images(p, passed)
            if not found:
                raise UsageError(f"{p} holds no image files{_what_else(passed, ' (it holds ', ')')}; image files "
                                 "end in .jpg, .png or another image extension.")
            out += found
        elif p.is_file():
            out.append(str(p))
        elif p.exists():
            raise UsageError(f"{p} is not a file (a pipe, socket or device), and reading it could wait forever; pass "
                             "image files or folders.")
        else:
            raise PathNotFoundError(f"{p} does not exist.")
    if passed:
        print(f"left out{_what_else(passed, ' ', '')} in the folders given: from a folder, only files whose names "
              "end in an image extension (.jpg, .png...) are read; name a file directly to try it anyway.",
              file=sys.stderr)
    return out


def _what_else(paths: list[str], before: str, after: str) -> str:
    """``3 files (.txt x2, .heic)`` and ``1 pipe, socket or device``, for the files :func:`list_images` passed."""
    special = sum(map(_is_special, paths))
    kinds = Counter(Path(p).suffix.lower() or "no extension" for p in paths if not _is_special(p))
    parts = []
    if kinds:
        n = sum(kinds.values())
        listed = ", ".join(k if c == 1 else f"{k} x{c}" for k, c in kinds.most_common(6))
        parts.append(f"{n} file{'s' if n > 1 else ''} ({listed}{', ...' if len(kinds) > 6 else ''})")
    if special:
        parts.append(f"{special} pipe{'s' if special > 1 else ''}, socket{'s' if special > 1 else ''} or device"
                     f"{'s' if special > 1 else ''}")
    return before + " and ".join(parts) + after if parts else ""


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_class_folders(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    """Reads ``folder/<class>/**/image``. With ``classes`` given, folder names must be among them."""
    dirs = _class_dirs(folder)
    if not dirs:
        n_loose = len([f for f in folder.iterdir() if f.is_file() and is_image_file(f)])
        extra = f" (it holds {n_loose} images directly; move them into one subfolder per class)" if n_loose else ""
        raise DataError(f"{folder} has no class subfolders{extra}. Expected {folder}/<class name>/<images>, "
                         "optionally inside train/ and val/ folders, or a CSV manifest with path,label columns.")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"{folder} has classes the model was not trained on: {', '.join(unknown)}. "
                             f"The model knows: {', '.join(classes)}.")
    idx = {c: i for i, c in enumerate(classes)}
    samples = [(p, idx[d.name]) for d in dirs for p in list_images(d)]
    return classes, samples


def stratified_split(samples: list[Sample], fraction: float, seed: int,
                     groups: dict[str, int] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Moves ``fraction`` of each class (at least one image when the class has two or more) to the second list.

    Args:
        samples: the images to split.
        fraction: share of each class to move.
        seed: makes the split repeatable.
        groups: path -> group id, for images that must stay on one side (duplicates). A group counts for the class
            of its first image; paths not in it are groups of one. Without groups of two or more, the split is the
            one made without ``groups``.
    """
    rng = random.Random(seed)
    units: dict[object, list[Sample]] = {}
    for i, s in enumerate(samples):
        units.setdefault(i if not groups or s[0] not in groups else ("group", groups[s[0]]), []).append(s)
    by_class: dict[int, list[list[Sample]]] = {}
    for unit in units.values():
        by_class.setdefault(unit[0][1], []).append(unit)
    keep, held = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        total = sum(map(len, items))
        n = 0 if total < 2 or fraction <= 0 else max(1, round(fraction * total))
        chosen = _fill(items, n, total)
        for k, unit in enumerate(items):
            (held if k in chosen else keep).extend(unit)
    return sorted(keep), sorted(held)


def _fill(units: list[list[Sample]], n: int, total: int) -> set[int]:
    """Which units to hold out: in order, each that still fits in ``n`` images; when none fits, the smallest that
    leaves the class some training images (a held-out class is better measured a little too much than not at all)."""
    chosen, count = set(), 0
    for k, unit in enumerate(units):
        if count >= n:
            break
        if count + len(unit) <= n:
            chosen.add(k)
            count += len(unit)
    if n and not chosen:
        smallest = min(range(len(units)), key=lambda k: len(units[k]))
        if len(units[smallest]) < total:
            chosen.add(smallest)
    return chosen


def _split_dir(folder: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (folder / name).is_dir():
            return folder / name
    return None


def read_csv_manifest(path: Path) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """A CSV with ``path,label`` (and optionally ``split``) columns; relative paths are relative to the CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in cols or "label" not in cols:
            raise DataError(f"{path} needs a header with 'path' and 'label' columns (and optionally 'split'); "
                             f"it has: {', '.join(cols) or 'no header'}.")
        rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
        for i, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            split = row.get("split") or "train"
            split = next((s for s, names in SPLIT_DIRS.items() if split.lower() in names), None)
            if split is None:
                raise DataError(f"{path} line {i}: split '{row.get('split')}' is not one of train, val, test.")
            p = Path(row["path"])
            rows[split].append((str(p if p.is_absolute() else path.parent / p), row["label"]))
    classes = sorted({label for split in rows.values() for _, label in split})
    return classes, rows


def discover(data: str | Path, val_fraction: float = 0.2, seed: int = 0, check: bool = True) -> DataSplits:
    """Finds classes and splits in ``data``.

    Args:
        data: a folder with ``train/``, ``val/`` (optional) and ``test/`` (optional) subfolders of class folders;
            or one folder of class folders; or a CSV manifest (``path,label[,split]``); or WebDataset tar shards
            or a Hugging Face dataset (:mod:`headstart.data.packed`).
        val_fraction: share of each class held out for validation when no validation split is given.
        seed: makes that split repeatable.
        check: refuse splits that cannot train a classifier (:func:`validate`); ``headstart check`` turns it off
            to list such problems among its other findings.
    """
    packed = is_packed(data)
    data = Path(data)
    if not packed and not data.exists():
        raise PathNotFoundError(f"{data} does not exist; pass a folder of class subfolders or a CSV manifest.")
    if data.is_file() or packed:
        if not packed and data.suffix.lower() != ".csv":
            raise DataError(f"{data} is a file but not a .csv manifest; pass a folder of class subfolders or a CSV.")
        classes, rows, layout = read_packed(str(data)) if packed else (*read_csv_manifest(data), f"csv manifest {data}")
        idx = {c: i for i, c in enumerate(classes)}
        train, val, test = ([(p, idx[y]) for p, y in rows[s]] for s in ("train", "val", "test"))
        val_made = not val
        if not val:
            train, val = stratified_split(train, val_fraction, seed)
            layout += f" (validation: {val_fraction:.0%} of each class, seed {seed})"
    elif (train_dir := _split_dir(data, "train")) is not None:
        classes, train = read_class_folders(train_dir)
        val_dir, test_dir = _split_dir(data, "val"), _split_dir(data, "test")
        val = read_class_folders(val_dir, classes)[1] if val_dir else []
        test = read_class_folders(test_dir, classes)[1] if test_dir else []
        layout = "split folders"
        val_made = not val
        if not val:
            train, val = stratified_split(train, val_fraction, seed)
            layout += f" (validation: {val_fraction:.0%} of each train class, seed {seed})"
    else:
        classes, all_samples = read_class_folders(data)
        train, val = stratified_split(all_samples, val_fraction, seed)
        test, val_made = [], True
        layout = f"class folders (validation: {val_fraction:.0%} of each class, seed {seed})"
    splits = DataSplits(classes, train, val, test, layout, val_made)
    if check:
        validate(splits, data)
    return splits


def validate(splits: DataSplits, data: Path | str) -> None:
    """Refuses data that cannot train a classifier, saying why."""
    counts = splits.counts("train")
    empty = [c for c, n in counts.items() if n == 0]
    if not splits.train:
        raise DataError(f"no images found in {data} (looked for {', '.join(e.lstrip('.') for e in ('.jpg', '.png'))} "
                         "and other image files inside the class folders).")
    if empty:
        raise DataError(f"class{'es' if len(empty) > 1 else ''} {', '.join(empty)} in {data} "
                         "ha{} no usable training images; add images or remove the folder.".format(
                             've' if len(empty) > 1 else 's'))
    if len(splits.classes) < 2:
        raise DataError(f"{data} has only one class ({splits.classes[0]}); a classifier needs at least two.")
