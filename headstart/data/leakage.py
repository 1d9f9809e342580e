"""Keeping duplicates from leaking across splits: one picture in train and in val or test.

A duplicate across splits inflates two figures at once: validation (which picks the epoch, the phase and the
temperature) rewards memorising the training copy, and the reported test accuracy counts images the model has
already seen. ``headstart check`` reports such copies; this module acts on them. When headstart made the validation
split, ``leak_proof_split`` re-splits with each group of duplicates kept whole on one side. When the splits were
given, ``drop_leaked`` leaves the training images alone and removes their copies from val and test. A run keeps the
``fingerprints`` of its training images so that a later evaluation can leave out their copies (``duplicates_of``).

Duplicates are exact (the same bytes) or near: 64-bit perceptual hashes (``FileFacts.phash``) at most ``near`` bits
apart, which finds re-encoded, resized and brightened copies but not crops or flips.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from headstart.core.errors import DataError
from headstart.data.sources import DataSplits, stratified_split

if TYPE_CHECKING:  # check imports this module for its grouping; FileFacts is only named here
    from headstart.data.check import FileFacts


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for the pairs of distinct 64-bit hashes at most ``max_distance`` bits apart.

    Two hashes that close agree exactly on at least one of ``max_distance + 1`` bands of bits (pigeonhole), so only
    hashes that share a band are compared: near-linear in practice, where all pairs would be quadratic.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    bounds = np.linspace(0, 64, max_distance + 2).astype(int)
    found: dict[tuple[int, int], int] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        ordered = band[order]
        for members in np.split(order, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1):
            if len(members) < 2:
                continue
            x = hashes[members]
            dist = np.bitwise_count(x[:, None] ^ x[None, :])
            for a, b in zip(*np.nonzero(np.triu(dist <= max_distance, 1))):
                i, j = sorted((int(members[a]), int(members[b])))
                found[i, j] = int(dist[a, b])
    return [(i, j, d) for (i, j), d in sorted(found.items())]


def _connected(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (of two or more) of ``range(n)`` joined by ``pairs``."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    groups = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def group_duplicates(facts: Sequence[FileFacts], near: int = 6) -> list[list[int]]:
    """Indices into ``facts`` (all readable) of each group of duplicates, two or more, in index order.

    Images join a group through the same bytes, the same perceptual hash or hashes within ``near`` bits, and
    transitively. Perceptual hashes count only where ``phash_ok`` (thumbnails share hashes by chance).
    """
    pairs = []
    for key in ("sha", "phash"):
        first: dict = {}
        for i, f in enumerate(facts):
            if key == "sha" or f.phash_ok:
                pairs.append((i, first.setdefault(getattr(f, key), i)))
    if near > 0:
        distinct = sorted({f.phash for f in facts if f.phash_ok})
        index = {h: k for k, h in enumerate(distinct)}
        by_hash = defaultdict(list)
        for i, f in enumerate(facts):
            if f.phash_ok:
                by_hash[index[f.phash]].append(i)
        pairs += [(by_hash[a][0], by_hash[b][0]) for a, b, _ in near_pairs(np.array(distinct, np.uint64), near)]
    return _connected(len(facts), pairs)


def duplicate_groups(facts: dict[str, FileFacts], near: int = 6) -> list[list[str]]:
    """The paths of each group (two or more) of exact or near duplicates among the readable files of ``facts``.

    Args:
        facts: what ``check.inspect_files`` found, by path; files it could not read are left out.
        near: most bits two perceptual hashes may differ by for near duplicates; 0 finds only identical pictures.
    """
    paths = [p for p, f in facts.items() if f.error is None]
    return [[paths[i] for i in g] for g in group_duplicates([facts[p] for p in paths], near)]


def leak_proof_split(splits: DataSplits, facts: dict[str, FileFacts], val_fraction: float, seed: int,
                     near: int = 6) -> DataSplits:
    """``splits`` with its validation split made again so that no group of duplicates has images on both sides.

    Train and val are pooled and split stratified (``stratified_split``) with each group whole; test is left as it
    is (its copies of training images are ``drop_leaked``'s business). When no group straddles train and val the
    splits come back unchanged, so runs on data without leaks keep the split they always had.

    Args:
        splits: from ``discover``, with a validation split headstart made (``val_made``).
        facts: ``check.inspect_files`` of at least the train and val images; paths without facts count as unique.
        val_fraction: share of each class to hold out, as given to ``discover``.
        seed: makes the split repeatable.
        near: see ``duplicate_groups``.
    """
    if not splits.val_made:
        raise DataError("leak_proof_split re-splits a validation split headstart made, but this one was given "
                         f"({splits.layout}); use drop_leaked to remove its copies of training images instead.")
    pool = splits.train + splits.val
    found = duplicate_groups({p: facts[p] for p, _ in pool if p in facts}, near)
    grouped = {p for g in found for p in g}
    found += [[p] for p, n in Counter(p for p, _ in pool).items() if n > 1 and p not in grouped]  # one file twice
    train = {p for p, _ in splits.train}
    val = {p for p, _ in splits.val}
    if not any(train.intersection(g) and val.intersection(g) for g in found):
        return splits
    groups = {p: k for k, g in enumerate(found) for p in g}
    keep, held = stratified_split(sorted(pool), val_fraction, seed, groups=groups)
    return replace(splits, train=keep, val=held,
                   layout=f"{splits.layout}, {len(found)} group(s) of duplicates kept on one side")


def drop_leaked(splits: DataSplits, facts: dict[str, FileFacts],
                near: int = 6) -> tuple[DataSplits, dict[str, list[str]]]:
    """Removes from val and test the images that duplicate a training image, exactly or nearly.

    For splits that were given (split folders, a CSV with a split column): training keeps every image and the
    held-out figures are measured on pictures the model has not seen. Duplicates between val and test with no copy
    in train are left alone: they inflate nothing the model was fitted on.

    Args:
        splits: from ``discover``.
        facts: ``check.inspect_files`` of the images of all splits; paths without facts count as unique.
        near: see ``duplicate_groups``.

    Returns:
        The splits without those images, and the removed paths, ``{"val": [...], "test": [...]}``.
    """
    reference = fingerprints(facts, [p for p, _ in splits.train])
    held_out = {p: facts[p] for name in ("val", "test") for p, _ in getattr(splits, name) if p in facts}
    leaked = duplicates_of(reference, held_out, near)
    removed = {name: list(dict.fromkeys(p for p, _ in getattr(splits, name) if p in leaked))
               for name in ("val", "test")}
    kept = replace(splits, val=[s for s in splits.val if s[0] not in leaked],
                   test=[s for s in splits.test if s[0] not in leaked])
    return kept, removed


def fingerprints(facts: dict[str, FileFacts], paths: Iterable[str]) -> dict[str, dict]:
    """What ``duplicates_of`` needs to know of ``paths``, JSON-ready: ``{path: {"sha", "phash", "phash_ok"}}``.

    The perceptual hash is written as 16 hex digits (a 64-bit integer loses bits in readers that use doubles).
    Paths without facts, or whose file could not be read, are left out.
    """
    return {p: {"sha": f.sha, "phash": f"{f.phash:016x}", "phash_ok": f.phash_ok}
            for p in paths if (f := facts.get(p)) is not None and f.error is None}


def duplicates_of(reference: dict[str, dict], facts: dict[str, FileFacts], near: int = 6) -> set[str]:
    """The paths in ``facts`` whose image duplicates one of ``reference``, exactly or nearly.

    Args:
        reference: ``fingerprints`` of the images to compare against, e.g. a run's training images.
        facts: ``check.inspect_files`` of the images to check; unreadable ones are never duplicates.
        near: see ``duplicate_groups``.
    """
    shas = {r["sha"] for r in reference.values()}
    ref_hashes = {int(r["phash"], 16) for r in reference.values() if r["phash_ok"]}
    usable = {p: f for p, f in facts.items() if f.error is None}
    own = {f.phash for f in usable.values() if f.phash_ok}
    matched = own & ref_hashes
    if near > 0:
        distinct = sorted(ref_hashes | own)
        for i, j, _ in near_pairs(np.array(distinct, np.uint64), near):
            for a, b in ((distinct[i], distinct[j]), (distinct[j], distinct[i])):
                if a in ref_hashes and b in own:
                    matched.add(b)
    return {p for p, f in usable.items() if f.sha in shas or (f.phash_ok and f.phash in matched)}
