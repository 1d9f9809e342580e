"""Several labels per image: the CSV manifests that carry them, what ``check`` says about them, and splits that keep
every label on both sides.

Two CSV forms are read: a ``path`` column and a ``labels`` column whose labels are separated by ``;`` (or the
delimiter the user names), or a ``path`` column and one 0/1 column per label (an optional ``split`` column in
both). An image with no label is allowed (a negative for every label) and reported.

A random 20% validation split of a rare label often holds none of its images, and then nothing can choose its
threshold or score it. Iterative stratification (Sechidis et al. 2011) assigns the rarest labels first; measured
on the mosaic set (``benchmarks/multilabel.py``, docs/measurements). It is written here (40 lines): the
``iterative-stratification`` package installs a top-level ``tests`` package that hides the project's own. Groups
of copies (``data.leakage``) stay on one side: each group is split as one unit carrying the union of its labels.
"""

from __future__ import annotations

import csv
import difflib
import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from headstart.core.errors import DataError
from headstart.core.hashing import KnownHashes
from headstart.data.sources import SPLIT_DIRS, DataSplits

TASK = "multilabel"
MultiSample = tuple[str, tuple[int, ...]]  # (path, 0/1 per label)
MIN_POSITIVES = 5  # a label with fewer training images is warned about; with none held out it cannot be evaluated
NO_LABEL = "(none)"  # the label set of an image with no label, where one is spelled out


@dataclass
class RowProblem:
    """A CSV row that cannot be used as written, or looks wrong: one sentence, and whether training skips it."""

    line: int
    path: str
    message: str
    skip: bool

    def to_json(self) -> dict:
        return {"line": self.line, "path": self.path, "message": self.message, "skip": self.skip}


@dataclass
class MultiLabelSplits:
    """Which image went where with which labels: ``labels`` names the columns of every 0/1 tuple."""

    labels: list[str]
    train: list[MultiSample]
    val: list[MultiSample]
    test: list[MultiSample] = field(default_factory=list)
    layout: str = ""
    val_made: bool = False
    problems: list[RowProblem] = field(default_factory=list, repr=False)
    hashes: KnownHashes = field(default_factory=KnownHashes, repr=False, compare=False)

    task = TASK

    @property
    def classes(self) -> list[str]:  # what the run records call the output names
        return self.labels

    def counts(self, split: str = "train") -> dict[str, int]:
        """Images of ``split`` holding each label."""
        rows = [y for _, y in getattr(self, split)]
        totals = np.asarray(rows, dtype=np.int64).sum(0) if rows else np.zeros(len(self.labels), np.int64)
        return {name: int(n) for name, n in zip(self.labels, totals)}

    def unlabelled(self, split: str = "train") -> int:
        return sum(1 for _, y in getattr(self, split) if not any(y))

    def to_json(self) -> dict:
        """Each image with the names of its labels (absolute paths, as single-label splits)."""
        return {"task": TASK, "classes": self.labels, "layout": self.layout, "val_made": self.val_made,
                **{s: [[os.path.abspath(p), names(self.labels, y)] for p, y in getattr(self, s)]
                   for s in ("train", "val", "test")}}

    @classmethod
    def from_json(cls, d: dict) -> "MultiLabelSplits":
        labels = d["classes"]
        return cls(labels, *([(p, multi_hot(labels, ys)) for p, ys in d[s]] for s in ("train", "val", "test")),
                   layout=d["layout"], val_made=d.get("val_made", False))

    def as_sets(self) -> DataSplits:
        """The same images as single-label splits whose "class" is the image's label set (``a;b``): what the file
        check and the duplicate and leakage machinery read. Copies with different label sets are label conflicts."""
        sets = sorted({set_name(self.labels, y) for s in ("train", "val", "test") for _, y in getattr(self, s)})
        idx = {c: i for i, c in enumerate(sets)}
        return DataSplits(sets, *([(p, idx[set_name(self.labels, y)]) for p, y in getattr(self, s)]
                                  for s in ("train", "val", "test")), layout=self.layout, val_made=self.val_made)

    def keep(self, sets: DataSplits) -> "MultiLabelSplits":
        """These splits reduced to the paths ``sets`` (from :meth:`as_sets`, then filtered or re-split) kept where it
        kept them."""
        labels_of = {p: y for s in ("train", "val", "test") for p, y in getattr(self, s)}
        return replace(self, **{s: [(p, labels_of[p]) for p, _ in getattr(sets, s)] for s in ("train", "val", "test")},
                       layout=sets.layout)


def multi_hot(labels: list[str], present) -> tuple[int, ...]:
    chosen = set(present)
    return tuple(int(name in chosen) for name in labels)


def names(labels: list[str], y) -> list[str]:
    return [name for name, v in zip(labels, y) if v]


def set_name(labels: list[str], y) -> str:
    return ";".join(names(labels, y)) or NO_LABEL


def is_multilabel_csv(path: str | Path) -> bool:
    """Whether ``path`` is a CSV manifest of the multi-label kind: a ``labels`` column, or no ``label`` column and
    only 0/1 columns besides ``path`` and ``split``."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return False
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [c.strip().lower() for c in next(reader, [])]
        first = next(reader, None)
    if "path" not in header or "label" in header:
        return False
    if "labels" in header:
        return True
    others = [i for i, c in enumerate(header) if c not in ("path", "split")]
    return len(others) >= 2 and first is not None and all((first[i].strip() if i < len(first) else "") in ("0", "1")
                                                           for i in others)


def _split_of(value: str, path: Path, line: int) -> str:
    split = next((s for s, known in SPLIT_DIRS.items() if (value or "train").lower() in known), None)
    if split is None:
        raise DataError(f"{path} line {line}: split '{value}' is not one of train, val, test.")
    return split


def _row_labels(row: dict, columns: list[str] | None, delimiter: str, path: Path, line: int) -> list[str] | None:
    """The labels of one row, or None for a row whose 0/1 cells are not 0 or 1."""
    if columns is None:
        return [t.strip() for t in (row.get("labels") or "").split(delimiter) if t.strip()]
    cells = {c: (row.get(c) or "").strip() for c in columns}
    if any(v not in ("0", "1") for v in cells.values()):
        return None
    return [c for c, v in cells.items() if v == "1"]


def read_multilabel_csv(path: str | Path, delimiter: str = ";") -> tuple[list[str], dict[str, list], list[RowProblem]]:
    """Reads a multi-label manifest: ``(labels, {split: [(path, [label names])]}, row problems)``.

    Rows that cannot be used (a file that is not there, 0/1 cells that are something else) are not in the splits and
    are among the problems with ``skip``; rows that look wrong but are usable (no label at all, a label seen once
    that looks like a typo of a common one) stay, and are among the problems without it.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in header:
            raise DataError(f"{path} needs a 'path' column and either a 'labels' column (labels separated by "
                            f"'{delimiter}') or one 0/1 column per label; it has: {', '.join(header) or 'no header'}.")
        columns = None if "labels" in header else [c for c in header if c not in ("path", "split")]
        rows: dict[str, list] = {"train": [], "val": [], "test": []}
        problems: list[RowProblem] = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            p = Path(row.get("path", ""))
            full = str(p if p.is_absolute() else path.parent / p)
            found = _row_labels(row, columns, delimiter, path, line)
            if not row.get("path"):
                problems.append(RowProblem(line, "", f"line {line} has no path; fill it in or delete the row.", True))
            elif not os.path.exists(full):
                problems.append(RowProblem(line, full, f"line {line}: {row['path']} does not exist (looked for "
                                                       f"{full}); fix the path or delete the row.", True))
            elif found is None:
                problems.append(RowProblem(line, full, f"line {line}: the label columns of {row['path']} must hold 0 "
                                                       "or 1; fix the cells or delete the row.", True))
            else:
                rows[_split_of(row.get("split", ""), path, line)].append((full, list(dict.fromkeys(found))))
    return _labels_and_findings(rows, columns, problems, path, delimiter)


def _labels_and_findings(rows: dict[str, list], columns: list[str] | None, problems: list[RowProblem], path: Path,
                         delimiter: str) -> tuple[list[str], dict[str, list], list[RowProblem]]:
    """The label names, and the usable rows that look wrong: no label at all, a label seen once that is close to a
    label seen often (a typo); ``line`` is 0 where the row's line is not known any more."""
    seen = Counter(name for split in rows.values() for _, ys in split for name in ys)
    labels = columns if columns is not None else sorted(seen)
    for split in rows.values():
        for p, ys in split:
            if not ys:
                problems.append(RowProblem(0, p, f"{p} has no label: it counts as a negative for every label; give it "
                                                 f"its labels (separated by '{delimiter}') if it has some.", False))
    common = [name for name, n in seen.items() if n >= 3]
    for name in (n for n, c in seen.items() if c == 1):
        near = difflib.get_close_matches(name, [c for c in common if c != name], n=1, cutoff=0.7)
        if near:
            where = next(p for split in rows.values() for p, ys in split if name in ys)
            problems.append(RowProblem(0, where, f"label '{name}' of {where} appears once and looks like a typo of "
                                                 f"'{near[0]}' ({seen[near[0]]} images); correct it if it is one.",
                                       False))
    if not labels:
        raise DataError(f"{path} names no labels in any row; write each image's labels in its 'labels' column, "
                        f"separated by '{delimiter}'.")
    return labels, rows, problems


def iterative_split(samples: list[MultiSample], fraction: float, seed: int,
                    groups: dict[str, int] | None = None) -> tuple[list[MultiSample], list[MultiSample]]:
    """Moves about ``fraction`` of the images to the second list, every label represented on both sides where it has
    two images or more (iterative stratification); each group of ``groups`` (path -> group id) moves whole.

    Args:
        samples: ``(path, 0/1 per label)``.
        fraction: share to hold out.
        seed: makes the split repeatable.
        groups: images that must stay together (duplicates); paths not in it are groups of one.
    """
    units: dict[object, list[MultiSample]] = {}
    for i, s in enumerate(samples):
        units.setdefault(("group", groups[s[0]]) if groups and s[0] in groups else i, []).append(s)
    members = list(units.values())
    if len(members) < 2 or fraction <= 0:
        return sorted(samples), []
    y = np.array([np.sum([m[1] for m in unit], axis=0) for unit in members], dtype=np.float64)
    sizes = np.array([len(unit) for unit in members], dtype=np.float64)
    held = _stratify(y, sizes, fraction, np.random.default_rng(seed))
    keep = [s for k, unit in enumerate(members) if not held[k] for s in unit]
    return sorted(keep), sorted(s for k, unit in enumerate(members) if held[k] for s in unit)


def _stratify(y: np.ndarray, sizes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sechidis et al.'s iterative stratification into two subsets (train, held out): the label with the fewest
    unassigned positives goes first, each of its units to the subset that still wants that label most (then the
    one that wants the most images, then at random). Returns which units are held out."""
    ratio = np.array([1 - fraction, fraction])
    want_label = ratio[:, None] * y.sum(0)[None, :]
    want = ratio * sizes.sum()
    side = np.full(len(y), -1)
    while (left := side < 0).any():
        positives = (y[left] > 0).sum(0)
        if positives.any():
            label = rng.choice(np.flatnonzero(positives == positives[positives > 0].min()))
            rows = np.flatnonzero(left & (y[:, label] > 0))
        else:  # units with no label left: by how many images each subset still wants
            label, rows = None, np.flatnonzero(left)
        for k in rng.permutation(rows):
            score = np.stack([want_label[:, label] if label is not None else np.zeros(2), want, rng.random(2)])
            s = int(np.lexsort(score[::-1])[-1])
            side[k] = s
            want_label[s] -= y[k]
            want[s] -= sizes[k]
    return side == 1


def draw_subset(samples: list[MultiSample], n: int, seed: int) -> tuple[list[MultiSample], list[MultiSample]]:
    """Exactly ``n`` of ``samples`` (all of them when there are no more), and the rest: drawn by iterative
    stratification, then every label that has a positive among ``samples`` given one in the draw where ``n`` allows
    (a rare label's share of a small draw rounds to none, which the stratification alone accepts).

    Args:
        samples: ``(path, 0/1 per label)``.
        n: images to draw.
        seed: makes the draw repeatable.
    """
    if n >= len(samples):
        return sorted(samples), []
    rest, drawn = iterative_split(samples, n / len(samples), seed)
    rng = random.Random(seed)
    rng.shuffle(rest)  # the order in which images are tried for a move
    rng.shuffle(drawn)
    count = np.sum([y for _, y in drawn], axis=0) if drawn else np.zeros(len(samples[0][1]), np.int64)

    def spare(s: MultiSample) -> bool:  # leaving the draw takes no label's last positive with it
        return bool(np.all(count[np.flatnonzero(s[1])] > 1))

    def move(s: MultiSample, to_draw: bool) -> None:
        nonlocal count
        (rest if to_draw else drawn).remove(s)
        (drawn if to_draw else rest).append(s)
        count = count + (1 if to_draw else -1) * np.asarray(s[1])

    while len(drawn) > n:  # the stratification's size is only close to the share asked for
        move(next((s for s in drawn if spare(s)), drawn[0]), False)
    while len(drawn) < n:
        move(next((s for s in rest if any(count[j] == 0 for j in np.flatnonzero(s[1]))), rest[0]), True)
    totals = np.sum([y for _, y in samples], axis=0)
    for j in sorted(np.flatnonzero((count == 0) & (totals > 0)), key=lambda j: totals[j]):  # rarest first
        if count[j]:  # an earlier swap brought it in
            continue
        carriers = [s for s in rest if s[1][j]]
        held = np.asarray([y for _, y in carriers], dtype=bool)
        for outgoing in drawn:  # swap it for a carrier of label j that keeps every label it alone brings
            lost = np.flatnonzero(np.asarray(outgoing[1], dtype=bool) & (count == 1))
            fits = np.flatnonzero(held[:, lost].all(1))
            if len(fits):
                move(outgoing, False)
                move(carriers[fits[0]], True)
                break
    return sorted(drawn), sorted(rest)


def random_split(samples: list[MultiSample], fraction: float, seed: int) -> tuple[list[MultiSample], list]:
    """A plain shuffled split of the same size, the baseline iterative stratification is measured against."""
    order = samples[:]
    random.Random(seed).shuffle(order)
    n = round(fraction * len(order))
    return sorted(order[n:]), sorted(order[:n])


def missing_labels(labels: list[str], train: list[MultiSample], held: list[MultiSample]) -> list[str]:
    """Labels with an image in ``train`` and none in ``held``: what a held-out split cannot choose or score."""
    def present(samples):
        return np.asarray([y for _, y in samples]).sum(0) > 0 if samples else np.zeros(len(labels), bool)
    return [name for name, a, b in zip(labels, present(train), present(held)) if a and not b]


def discover_multilabel(data: str | Path, delimiter: str = ";", val_fraction: float = 0.2,
                        seed: int = 0) -> MultiLabelSplits:
    """The splits of a multi-label CSV: its ``split`` column where it has one, else ``val_fraction`` held out by
    iterative stratification (seeded). Rows that cannot be used are left out and kept in ``problems``."""
    data = Path(data)
    labels, rows, problems = read_multilabel_csv(data, delimiter)
    train, val, test = ([(p, multi_hot(labels, ys)) for p, ys in rows[s]] for s in ("train", "val", "test"))
    layout = f"multi-label csv manifest {data}"
    val_made = not val
    if val_made:
        train, val = iterative_split(train, val_fraction, seed)
        layout += f" (validation: {val_fraction:.0%}, iterative stratification, seed {seed})"
    splits = MultiLabelSplits(labels, train, val, test, layout, val_made, problems)
    if not splits.train:
        raise DataError(f"no usable rows in {data}: {problems[0].message if problems else 'it is empty'}")
    return splits


def label_findings(splits: MultiLabelSplits, min_positives: int = MIN_POSITIVES) -> list[tuple[str, str, str]]:
    """``(severity, kind, sentence)`` about the labels: rare ones, ones missing from a held-out split, images with
    no label."""
    out = []
    train = splits.counts("train")
    for name, n in train.items():
        if n == 0:
            out.append(("error", "label-unused", f"label '{name}' has no training image; add some or drop the "
                                                 "label."))
        elif n < min_positives:
            out.append(("warning", "rare-label", f"label '{name}' has only {n} training image(s) (fewer than "
                                                 f"{min_positives}): too rare to learn or evaluate reliably."))
    for split in ("val", "test"):
        if getattr(splits, split):
            for name in missing_labels(splits.labels, splits.train, getattr(splits, split)):
                out.append(("warning", "label-not-held-out",
                            f"label '{name}' has no {split} image: its threshold cannot be chosen (validation) or "
                            f"its figures measured ({split}); add {split} images that show it."))
    if n := splits.unlabelled("train"):
        out.append(("info", "no-label", f"{n} training image(s) have no label (negatives for every label)."))
    return out


# Single-label findings about "classes" that mean nothing for label sets (a set is rare by nature).
_SET_KINDS = ("few-images", "imbalance", "unusable")


def check_multilabel(splits: MultiLabelSplits, data: str | Path = "", min_positives: int = MIN_POSITIVES,
                     **options):
    """``headstart check`` of a multi-label set: the file, duplicate and leakage checks of single-label data (a
    copy whose label set differs is a label conflict), each unusable or odd CSV row in one sentence, and the labels'
    findings (:func:`label_findings`). ``options`` go to :func:`headstart.data.check.check_splits`."""
    from headstart.data.check import KINDS, CheckReport, Issue, check_splits

    report = check_splits(splits.as_sets(), data, **options)
    issues = [i for i in report.issues if i.kind not in _SET_KINDS]
    for problem in splits.problems:
        kind = "bad-row" if problem.skip else "no-label" if "has no label" in problem.message else "label-typo"
        issues.append(Issue(kind, problem.message, [{"path": problem.path, "split": "train", "class": ""}]
                            if problem.path else []))
    issues += [Issue(kind, message) for _, kind, message in label_findings(splits, min_positives)
               if kind != "no-label"]  # each such row is said above
    order = list(KINDS)
    issues.sort(key=lambda i: order.index(i.kind))
    counts = {s: splits.counts(s) for s in ("train", "val", "test")}
    return CheckReport(report.data, report.root, splits.layout, splits.labels, counts, report.files, issues,
                       report.seconds, report.facts)
