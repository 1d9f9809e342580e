"""Checking a dataset before training: broken files, duplicates and leakage across splits, odd modes, class balance.

Every file is read and decoded once, in a thread pool (PIL releases the GIL). The same pass gives the content hash
(exact duplicates), a 64-bit perceptual hash of a downscaled copy (which nominates near duplicates: re-encoded,
resized or brightened copies) and a 32x32 grey thumbnail (which confirms them, see ``leakage``), so ``train`` runs it
on every start at little more than the cost of a plain decode.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from headstart.core import hashing
from headstart.core.errors import DataError
from headstart.core.hardware import launched
from headstart.core.progress import progress
from headstart.data import facts_cache
from headstart.data.facts_cache import FactsStore
from headstart.data.images import MAX_PIXELS, BadImageError, decode_image
from headstart.data.leakage import NEAR_BITS, THUMB_SIDE, group_duplicates
from headstart.data.sources import DataSplits, Sample, discover, validate

SPLITS = ("train", "val", "test")

# kind: (severity, title). Errors are files train cannot use (it skips them) or data it refuses; warnings are data
# train uses but that deserves a look; info is for the record. The order is the order of the report.
KINDS = {
    "unusable": ("error", "training would refuse"),
    "bad-row": ("error", "CSV row that cannot be used"),
    "label-unused": ("error", "label without training images"),
    "unreadable": ("error", "cannot be read"),
    "empty": ("error", "empty file"),
    "not-image": ("error", "not an image"),
    "corrupt": ("error", "truncated or corrupt"),
    "too-large": ("error", "over the pixel limit"),
    "label-conflict": ("warning", "copies labelled differently"),
    "leak": ("warning", "same image in two splits"),
    "duplicate": ("warning", "duplicate within a split"),
    "few-images": ("warning", "class with few images"),
    "imbalance": ("warning", "class imbalance"),
    "label-typo": ("warning", "label that looks like a typo"),
    "rare-label": ("warning", "label too rare to evaluate"),
    "label-not-held-out": ("warning", "label missing from a held-out split"),
    "no-label": ("info", "image without a label"),
    "wrong-extension": ("warning", "extension does not match content"),
    "unusual-mode": ("warning", "unusual mode (converted)"),
    "exif-rotated": ("info", "EXIF rotation (applied)"),
}
# The warnings train mentions; the file quirks (extension, mode, rotation) it handles.
DATA_WARNINGS = ("label-conflict", "leak", "duplicate", "few-images", "imbalance")

# Modes headstart converts correctly but that often surprise: what happens to them, in a few words.
UNUSUAL_MODES = {
    "CMYK": "CMYK, converted to RGB",
    **dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N"), "16-bit, scaled to 8 bits"),
    "I": "32-bit integer, scaled to 8 bits", "F": "floating point, scaled to 8 bits",
    "RGBA": "RGBA, transparency composited on white", "LA": "greyscale with alpha, composited on white",
    "PA": "palette with alpha, composited on white", "YCbCr": "YCbCr, converted to RGB", "LAB": "Lab, converted to RGB",
    "HSV": "HSV, converted to RGB",
}
SAME_FORMAT = {"MPO": "JPEG"}  # multi-picture JPEGs from cameras are JPEGs; .jpg is right for them


@dataclass(slots=True)
class FileFacts:
    """What one decode of one file found; ``error`` is set for files that cannot be used. About 1.3 kB an image
    (the 1 kB thumbnail most of it; slots, not a ``__dict__``): a check holds them all, for the duplicate search."""

    path: str
    error: BadImageError | None = None
    format: str | None = None
    mode: str = ""
    transparency: bool = False
    orientation: int = 1
    sha: str = ""  # of the file's bytes (headstart.core.hashing.file_hash)
    stamp: int | None = None  # of the file's stat while they were read (hashing.KnownHashes); None: not to be reused
    phash: int = 0  # 64-bit perceptual hash of the decoded, upright image
    phash_ok: bool = False  # big enough for near copies to be looked for
    thumb: bytes = b""  # THUMB_SIDE x THUMB_SIDE grey levels of the upright image: confirms near copies
    stored: bool = False  # came from the facts store (facts_cache): the file was not decoded this time


MIN_PHASH_SIDE = 16  # pixels on the longest side below which only exact duplicates are looked for
# The check decodes JPEGs at reduced scale (sides >= 256 px): the perceptual hash needs 32 px, and the one full
# decode of each image is the training's own. On five 12-megapixel photos: 27-32 ms instead of 171-374 ms per
# image, perceptual hashes within 0-2 of 64 bits of the full decode's.
CHECK_DRAFT = 256
INSPECT_CHUNK = 8  # files per thread-pool task (see inspect_files)


def inspect_file(path: str, max_pixels: int = MAX_PIXELS, hashes: bool = True,
                 store: FactsStore | None = None) -> FileFacts:
    """Reads ``path`` once: decodes it (what training will see) and, with ``hashes``, hashes its bytes and a small
    copy of the picture (for duplicates). Without ``hashes`` it is the light check every pass over images uses.
    With a ``store`` holding the bytes' content hash, the facts come from it and nothing is decoded."""
    data = stamp = sha = None
    if hashes:
        try:
            data, stamp = hashing.read_stamped(path)
        except OSError:
            data = None  # decode_image reads it again and names the failure
    if store is not None and data is not None:
        sha = hashing.file_hash(path, data)
        if (hit := store.get(sha)) is not None:
            row, thumb = hit
            return FileFacts(path, None, row["format"].decode() or None, row["mode"].decode(),
                             bool(row["transparency"]), int(row["orientation"]), sha, stamp, int(row["phash"]),
                             bool(row["phash_ok"]), thumb, stored=True)
    try:
        decoded = decode_image(path, max_pixels, data=data, draft=CHECK_DRAFT)
    except BadImageError as exc:
        return FileFacts(path, error=exc)
    facts = FileFacts(path, None, decoded.format, decoded.mode, decoded.transparency, decoded.orientation)
    if hashes and data is not None:
        # The perceptual hash only needs 32x32; shrinking by whole factors first keeps big photos cheap.
        small = decoded.image.resize((64, 64), Image.Resampling.BOX, reducing_gap=2.0)
        bits = imagehash.phash(small).hash.ravel()
        facts.sha, facts.stamp = sha or hashing.file_hash(path, data), stamp
        facts.phash = int.from_bytes(np.packbits(bits).tobytes(), "big")
        facts.thumb = decoded.image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR,
                                                        reducing_gap=2.0).tobytes()
        # An 8 px image (scikit-learn's digits) has too little detail to tell a copy from a look-alike.
        facts.phash_ok = max(decoded.image.size) >= MIN_PHASH_SIDE
    return facts


def known_hashes(facts: dict[str, FileFacts]) -> hashing.KnownHashes:
    """The content hashes in ``facts``, each with the stamp of the read that gave it (:class:`KnownHashes`)."""
    known = hashing.KnownHashes()
    for path, f in facts.items():
        if f.sha:
            known.add(path, f.sha, f.stamp)
    return known


def inspect_files(paths: list[str], max_pixels: int = MAX_PIXELS, workers: int | None = None,
                  hashes: bool = True, desc: str = "check") -> dict[str, FileFacts]:
    """:func:`inspect_file` for each distinct path, in a thread pool (PIL releases the GIL while decoding).

    Each task is a few files: one task per file made 1,000 Fashion-MNIST thumbnails (where Python, not decoding,
    is the cost and threads fight over the GIL) 1.5-2x slower than a plain loop on 2 cores; chunks of 8 are as
    fast as the loop there and keep the pool's 2x on photos. Under torchrun the ranks share the files and every
    rank gets every fact (``train`` on every rank makes the same leak-proof split from them)."""
    unique = list(dict.fromkeys(paths))
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    rank, world = launched()  # under torchrun each rank reads every world-th chunk; rank 0 shows the progress

    store = FactsStore(facts_cache.settings(max_pixels, CHECK_DRAFT, THUMB_SIDE)) if hashes else None

    def some(chunk: list[str]) -> list[FileFacts]:
        return [inspect_file(p, max_pixels, hashes, store) for p in chunk]

    chunks = [unique[i:i + INSPECT_CHUNK] for i in range(0, len(unique), INSPECT_CHUNK)][rank::world]
    mine = []
    with ThreadPoolExecutor(workers) as pool:
        for part in progress(pool.map(some, chunks), desc, enabled=len(unique) > 1000 and rank == 0, unit="img",
                             total=len(chunks), per_item=INSPECT_CHUNK):
            mine += part
            for f in part if store is not None else ():
                if f.error is None and f.sha and not f.stored:  # a shard written every 4,096: a stop keeps them
                    store.add(f)
    if store is not None:
        store.flush()
        store.release()
    if world == 1:
        return dict(zip(unique, mine))
    from headstart.core.distributed import gather_objects  # torch: only when torchrun launched this process

    found = {f.path: f for facts in gather_objects(mine) for f in facts}
    return {p: found[p] for p in unique}


def scan(samples: Sequence[Sample], workers: int | None = None,
         max_pixels: int = MAX_PIXELS) -> tuple[list[Sample], list[tuple[str, str]]]:
    """The light check (one decode per image, no hashes): the usable samples, and ``(path, reason)`` for the
    others."""
    facts = inspect_files([p for p, _ in samples], max_pixels, workers, hashes=False)
    good = [s for s in samples if facts[s[0]].error is None]
    bad = [(s[0], facts[s[0]].error.reason) for s in samples if facts[s[0]].error is not None]
    return good, bad


@dataclass
class Issue:
    """One finding: a file, a group of duplicates, a class or the whole dataset."""

    kind: str
    message: str
    files: list[dict] = field(default_factory=list)  # {"path", "split", "class"}; no "path" for a class

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]

    def to_json(self) -> dict:
        return {"severity": self.severity, "kind": self.kind, "message": self.message, "files": self.files}


@dataclass
class CheckReport:
    """Everything ``headstart check`` found, and which files training would have to leave out."""

    data: str
    root: Path  # paths are shown and quarantined relative to it
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # usable images per split and class
    files: int
    issues: list[Issue]
    seconds: float = 0.0
    facts: dict[str, FileFacts] = field(default_factory=dict, repr=False)  # by path, for acting on leaks (leakage)

    @property
    def verdict(self) -> str:
        severities = {i.severity for i in self.issues}
        return "problems" if "error" in severities else "warnings" if "warning" in severities else "ok"

    def known_hashes(self) -> hashing.KnownHashes:
        """The content hashes the check computed, for the commands after it not to read the files again."""
        return known_hashes(self.facts)

    def bad_files(self) -> list[tuple[str, str]]:
        """``(path, reason)`` for each file training cannot use, once each, in report order."""
        out = {}
        for issue in self.issues:
            if issue.severity == "error" and issue.files:
                out.setdefault(issue.files[0]["path"], issue.message)
        return list(out.items())

    def summary(self, kinds: tuple[str, ...] = DATA_WARNINGS) -> str:
        """One line on the warnings of these kinds, e.g. ``2 images in two splits, imbalance 12:1``; '' if none."""
        parts = []
        for kind in kinds:
            found = [i for i in self.issues if i.kind == kind]
            if not found:
                continue
            if kind == "label-conflict":
                parts.append(f"{len(found)} copied picture(s) labelled differently")
            elif kind == "leak":
                parts.append(f"{sum(len(i.files) for i in found)} images in more than one split (leakage)")
            elif kind == "duplicate":
                parts.append(f"{len(found)} group(s) of duplicate images")
            elif kind == "imbalance":
                parts.append(found[0].message)
            elif kind == "few-images":
                parts.append(f"{len(found)} class(es) with few images")
            else:
                parts.append(f"{len(found)} {KINDS[kind][1]}")
        return "; ".join(parts)

    def to_json(self) -> dict:
        by_severity = Counter(i.severity for i in self.issues)
        return {"data": self.data, "layout": self.layout, "verdict": self.verdict, "files": self.files,
                "classes": self.classes, "counts": self.counts,
                "summary": {s: by_severity.get(s, 0) for s in ("error", "warning", "info")},
                "by_kind": dict(Counter(i.kind for i in self.issues)),
                "issues": [i.to_json() for i in self.issues], "seconds": round(self.seconds, 3)}


def _duplicate_issues(entries: list[dict], facts: list[FileFacts], mode: str, near: int) -> list[Issue]:
    """Copies, grouped: exact (same bytes) and near (perceptual hash within ``near`` bits, confirmed on thumbnails).
    A confirmed pair labelled differently is also a label conflict."""
    issues = []
    groups, pairs = group_duplicates(facts, mode, near)
    lowest: dict[int, float] = {}
    for i, j, sim in pairs:
        lowest[i] = min(lowest.get(i, 1.0), sim)
        if entries[i]["class"] != entries[j]["class"]:
            issues.append(Issue("label-conflict", f"the same picture labelled {entries[i]['class']} and "
                                                  f"{entries[j]['class']} (similarity {sim:.3f}): one label is wrong",
                                [entries[i], entries[j]]))
    for group in groups:
        files = [entries[i] for i in group]
        splits = sorted({f["split"] for f in files}, key=SPLITS.index)
        labels = sorted({f["class"] for f in files})
        if len({facts[i].sha for i in group}) == 1:
            what = "the same file" if len({f["path"] for f in files}) == 1 else "identical files"
        else:
            worst = min(lowest.get(i, 1.0) for i in group)
            what = f"near-identical images (thumbnail similarity {'at least ' if len(group) > 2 else ''}{worst:.4f})"
        where = f"in {' and '.join(splits)}" if len(splits) > 1 else f"within {splits[0]}"
        conflict = f"; labelled differently: {', '.join(labels)}" if len(labels) > 1 else ""
        issues.append(Issue("leak" if len(splits) > 1 else "duplicate",
                            f"{len(files)} images: {what} {where}{conflict}", files))
    return issues


def _file_issues(entry: dict, f: FileFacts) -> list[Issue]:
    if f.error is not None:
        return [Issue(f.error.kind, f.error.reason, [entry])]
    issues = []
    ext = Path(f.path).suffix.lower()
    expected = Image.registered_extensions().get(ext)
    if expected and f.format and SAME_FORMAT.get(f.format, f.format) != expected:
        issues.append(Issue("wrong-extension", f"{f.format} content named {ext} (headstart reads it by content; "
                                               "other tools may not)", [entry]))
    if f.mode in UNUSUAL_MODES or (f.mode == "P" and f.transparency):
        issues.append(Issue("unusual-mode", UNUSUAL_MODES.get(f.mode, "palette with transparency, composited on "
                                                                     "white"), [entry]))
    if f.orientation not in (0, 1):
        issues.append(Issue("exif-rotated", f"EXIF orientation {f.orientation}: rotated upright, as a viewer would",
                            [entry]))
    return issues


def _class_issues(counts: dict[str, dict[str, int]], min_images: int, max_imbalance: float) -> list[Issue]:
    issues = []
    train = counts["train"]
    for name, n in train.items():
        if 0 < n < min_images:
            issues.append(Issue("few-images", f"class {name} has {n} training image{'s' if n != 1 else ''} "
                                              f"(fewer than {min_images}); add more, or expect it to be guessed "
                                              "poorly", [{"split": "train", "class": name}]))
    if sum(counts["val"].values()):
        for name, n in counts["val"].items():
            if n == 0 and train.get(name):
                issues.append(Issue("few-images", f"class {name} has no validation images, so its accuracy is not "
                                                  "measured", [{"split": "val", "class": name}]))
    present = {c: n for c, n in train.items() if n}
    if len(present) >= 2:
        big, small = max(present, key=present.get), min(present, key=present.get)
        ratio = present[big] / present[small]
        if ratio > max_imbalance:
            issues.append(Issue("imbalance", f"class imbalance {ratio:.0f}:1 ({big} {present[big]}, {small} "
                                             f"{present[small]} training images; above {max_imbalance:g}:1)"))
    return issues


def check_splits(splits: DataSplits, data: str | Path = "", *, max_pixels: int = MAX_PIXELS, min_images: int = 5,
                 max_imbalance: float = 10.0, duplicates: str = "near", near: int = NEAR_BITS,
                 workers: int | None = None) -> CheckReport:
    """Checks the files of ``splits`` (which it leaves as they are).

    Args:
        splits: what ``discover`` found.
        data: the dataset as the user named it (a folder or a CSV), for messages and relative paths.
        max_pixels: larger images are errors (decompression bombs).
        min_images: training classes with fewer usable images are warned about.
        max_imbalance: largest over smallest training class above this is warned about.
        duplicates: what counts as a copy (``leakage.DUPLICATE_MODES``): ``near`` (default; confirmed on
            thumbnails), ``exact`` (same bytes) or ``off``.
        near: perceptual hashes at most this many of 64 bits apart are candidate near copies (each confirmed on
            thumbnails); crops and flips are not found.
        workers: decoding threads (default: twice the cores, at most 8).
    """
    t0 = time.time()
    entries = [{"path": p, "split": s, "class": splits.classes[y]} for s in SPLITS for p, y in getattr(splits, s)]
    facts_by_path = inspect_files([e["path"] for e in entries], max_pixels, workers)
    issues = []
    for e in entries:
        issues += _file_issues(e, facts_by_path[e["path"]])
    good = [(e, facts_by_path[e["path"]]) for e in entries if facts_by_path[e["path"]].error is None]
    issues += _duplicate_issues([e for e, _ in good], [f for _, f in good], duplicates, near)

    usable = {e["path"] for e, _ in good}
    kept = DataSplits(splits.classes, *([s for s in getattr(splits, n) if s[0] in usable] for n in SPLITS),
                      layout=splits.layout)
    counts = {s: kept.counts(s) for s in SPLITS}
    issues += _class_issues(counts, min_images, max_imbalance)
    try:
        validate(kept, data)
    except ValueError as exc:
        issues.append(Issue("unusable", f"without the unusable files, {exc}"))

    order = list(KINDS)
    issues.sort(key=lambda i: (order.index(i.kind), [f.get("path", "") for f in i.files]))
    data = Path(data)
    root = data.parent if data.is_file() else data
    return CheckReport(str(data), root, splits.layout, splits.classes, counts, len(facts_by_path), issues,
                       time.time() - t0, facts_by_path)


def check(data: str | Path, val_fraction: float = 0.2, seed: int = 0, **options) -> CheckReport:
    """Finds the splits as ``train`` would (see ``discover``) and checks them; ``options`` go to ``check_splits``."""
    return check_splits(discover(data, val_fraction=val_fraction, seed=seed, check=False), data, **options)


def _free_name(target: Path) -> Path:
    """``target``, or ``name.1.ext``, ``name.2.ext``... whichever does not exist yet."""
    k = 0
    candidate = target
    while candidate.exists():
        k += 1
        candidate = target.with_name(f"{target.stem}.{k}{target.suffix}")
    return candidate


def quarantine(report: CheckReport, dest: str | Path) -> list[dict]:
    """Moves the files training cannot use to ``dest``, keeping their paths relative to the data, never overwriting.

    The moves are listed, with their reasons, in ``dest/quarantine.json`` (appended to, so it stays a full record).
    Returns those entries: ``{"path", "moved_to", "reason"}``.
    """
    dest, root = Path(dest).resolve(), report.root.resolve()
    if dest == root or root in dest.parents:
        raise DataError(f"--quarantine {dest} is inside {report.data}, where its files would be read as data again; "
                         "pass a folder outside it.")
    moved = []
    for path, reason in report.bad_files():
        src = Path(path)
        if not src.exists():
            continue  # a manifest row for a file that is not there: nothing to move
        try:
            rel = src.resolve().relative_to(root)
        except ValueError:  # a manifest may point outside its folder
            rel = Path(*src.resolve().parts[1:])
        target = _free_name(dest / rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, target)
        moved.append({"path": path, "moved_to": str(target), "reason": reason})
    if moved:
        log = dest / "quarantine.json"
        previous = json.loads(log.read_text()) if log.exists() else []
        log.write_text(json.dumps(previous + moved, indent=1))
    return moved
