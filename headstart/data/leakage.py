"""Keeping duplicates from leaking across splits: one picture in train and in val or test.

A duplicate across splits inflates two figures at once: validation (which picks the epoch, the phase and the
temperature) rewards memorising the training copy, and the reported test accuracy counts images the model has
already seen. ``headstart check`` reports such copies; this module acts on them. When headstart made the validation
split, ``leak_proof_split`` re-splits with each group of duplicates kept whole on one side. When the splits were
given, ``drop_leaked`` leaves the training images alone and removes their copies from val and test. A run keeps the
``fingerprints`` of every image its shipped weights were fitted on (train, and val after a refit) so that a later
evaluation can leave out their copies (``copies_of``).

A duplicate is a copy of pixels. Exact: the same bytes. Near: a 64-bit perceptual hash (``FileFacts.phash``) within
``NEAR_BITS`` bits only *nominates* a pair; it is a copy when the two images' 32x32 grey thumbnails, each brought to
zero mean and unit norm (so brightness and contrast do not count), correlate at ``MIN_SIMILARITY`` or more. Hashes
alone joined distinct pictures: 1,500 distinct Fashion-MNIST images at 64 px chained into 47 groups at 6 bits,
the largest 128 images across 3 classes. Measured with ``benchmarks/duplicates.py`` (docs/measurements/
duplicates.json): 0.99 leaves out 0.1% of distinct Fashion-MNIST images and none of scikit-image's samples, and
catches JPEG re-encodes (quality 60-90), PNG to JPEG, resizes of 0.5-2x and brightness/contrast changes of 15% on
images of 64 px and more. Crops, flips and (on images under about 100 px) 1-pixel shifts are not found.

Pairs are confirmed one by one: ``group_duplicates`` chains confirmed pairs (a split keeps a chain whole), but an
image is left out of a figure only when it is itself a confirmed copy of an image the model was fitted on.
"""

from __future__ import annotations

import base64
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from headstart.core.choices import DUPLICATE_MODES, NEAR_BITS
from headstart.core.errors import DataError
from headstart.data.sources import DataSplits, stratified_split

__all__ = ["DUPLICATE_MODES", "NEAR_BITS", "copies_of", "drop_leaked", "duplicate_groups", "fingerprints",
           "group_duplicates", "leak_proof_split", "near_pairs", "similarity"]
MIN_SIMILARITY = 0.99  # correlation of normalised 32x32 grey thumbnails that confirms a candidate as a copy
THUMB_SIDE = 32
FLAT_STD = 2.0  # grey levels: a thumbnail this even has no pattern to correlate; flat ones match on brightness
CHUNK = 65536  # about the most candidate pairs looked at per step (bounded memory)


class Fingerprinted(Protocol):
    """What this module reads of one file's inspection: :class:`headstart.data.check.FileFacts`, named by its shape
    because ``check`` imports this module (imports go one way: check -> leakage)."""

    error: Exception | None  # set when the file cannot be used: it is never a copy
    sha: str
    phash: int
    phash_ok: bool
    thumb: bytes


@dataclass
class Prints:
    """What comparing images needs, as arrays: content hashes, perceptual hashes, whether near copies can be
    looked for (big enough, thumbnail known) and the thumbnails (``THUMB_SIDE**2`` grey levels each)."""

    sha: list[str]
    phash: np.ndarray
    near_ok: np.ndarray
    thumbs: np.ndarray

    @classmethod
    def of_facts(cls, facts: Sequence[Fingerprinted]) -> Prints:
        thumbs = np.zeros((len(facts), THUMB_SIDE * THUMB_SIDE), np.uint8)
        ok = np.zeros(len(facts), bool)
        for i, f in enumerate(facts):
            if f.phash_ok and f.thumb:
                thumbs[i] = np.frombuffer(f.thumb, np.uint8)
                ok[i] = True
        return cls([f.sha for f in facts], np.array([f.phash for f in facts], np.uint64), ok, thumbs)

    @classmethod
    def of_records(cls, records: Sequence[dict]) -> Prints:
        """From ``fingerprints`` records; records without a thumbnail (runs before thumbnails were kept) can only
        match exactly."""
        thumbs = np.zeros((len(records), THUMB_SIDE * THUMB_SIDE), np.uint8)
        ok = np.zeros(len(records), bool)
        for i, r in enumerate(records):
            if r.get("phash_ok") and r.get("thumb"):
                thumbs[i] = np.frombuffer(base64.b64decode(r["thumb"]), np.uint8)
                ok[i] = True
        return cls([r["sha"] for r in records], np.array([int(r["phash"], 16) for r in records], np.uint64), ok,
                   thumbs)

    def __len__(self) -> int:
        return len(self.sha)

    def join(self, other: Prints) -> Prints:
        return Prints(self.sha + other.sha, np.concatenate([self.phash, other.phash]),
                      np.concatenate([self.near_ok, other.near_ok]), np.concatenate([self.thumbs, other.thumbs]))


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for the pairs of distinct 64-bit hashes at most ``max_distance`` bits apart (see
    :func:`near_pair_arrays`)."""
    i, j, d = near_pair_arrays(hashes, max_distance)
    return list(zip(i.tolist(), j.tolist(), d.tolist()))


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys``, sorted (by sorting: numpy's hash-based ``unique`` took 40 s on 10 million
    pair keys here)."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def near_pair_arrays(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``i < j`` and distances of the pairs of 64-bit hashes at most ``max_distance`` bits apart, sorted
    (:func:`near_pair_blocks`, gathered)."""
    blocks = list(near_pair_blocks(hashes, max_distance))
    i, j = (np.concatenate([np.zeros(0, np.int64), *(b[k] for b in blocks)]) for k in (0, 1))
    n = max(len(hashes), 1)
    keys = np.sort(i * n + j)
    i, j = keys // n, keys % n
    return i, j, np.bitwise_count(np.asarray(hashes, dtype=np.uint64)[i] ^ np.asarray(hashes, np.uint64)[j]).astype(
        np.int64)


def near_pair_blocks(hashes: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of index pairs ``i < j`` of hashes at most ``max_distance`` bits apart, each pair once.

    Two hashes that close agree exactly on at least one of ``max_distance + 1`` bands of bits (pigeonhole), so only
    hashes that share a band are compared: near-linear in practice, where all pairs would be quadratic. A pair is
    given by the first band its hashes agree on, so no set of the pairs seen is kept: memory stays bounded by a
    block (a crowded band value is compared 256 rows at a time), however many pairs there are. Measured on the
    60,000 Fashion-MNIST training images: the pairs gathered at once took about 1 GB, more than the rest of the
    check together.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    bounds = np.linspace(0, 64, max_distance + 2).astype(int)
    masks = [np.uint64((1 << (hi - lo)) - 1) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for k, (lo, mask) in enumerate(zip(bounds[:-1], masks)):
        band = (hashes >> np.uint64(lo)) & mask
        order = np.argsort(band, kind="stable")
        ordered = band[order]
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, n]):
            if e - s < 2:
                continue
            members = order[s:e]
            x = hashes[members]
            # 256 x 8,192 hashes compared at a time (16 MB); all members at once took 0.1 GB per 256 rows when
            # many Fashion-MNIST images share a band value
            for r0, c0 in itertools.product(range(0, len(members), 256), range(0, len(members), 8192)):
                if c0 + 8192 <= r0:
                    continue  # every pair there has j < i: given by the block on the other side of the diagonal
                a, b = np.nonzero(np.bitwise_count(x[r0:r0 + 256, None] ^ x[None, c0:c0 + 8192]) <= max_distance)
                b += c0
                keep = r0 + a < b
                i, j = members[r0 + a[keep]], members[b[keep]]
                xor = hashes[i] ^ hashes[j]
                earlier = np.zeros(len(i), bool)  # agreeing on an earlier band: given there already
                for lo2, mask2 in zip(bounds[:k], masks[:k]):
                    earlier |= ((xor >> np.uint64(lo2)) & mask2) == 0
                i, j = i[~earlier], j[~earlier]
                if len(i):
                    yield np.minimum(i, j), np.maximum(i, j)


def _normalised(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thumbnails at zero mean and unit norm, with each one's mean and standard deviation."""
    x = thumbs.astype(np.float32)
    mean = x.mean(1, keepdims=True)
    x -= mean
    std = x.std(1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6), mean[:, 0], std


def similarity(thumbs_a: np.ndarray, thumbs_b: np.ndarray) -> np.ndarray:
    """Row-wise similarity of two stacks of thumbnails: the correlation of their grey levels (1 for the same
    picture, whatever its brightness and contrast). Two flat thumbnails are 1 when their brightness is within 4
    grey levels, else 0; a flat one and a patterned one are 0."""
    za, ma, sa = _normalised(thumbs_a)
    zb, mb, sb = _normalised(thumbs_b)
    out = np.einsum("ij,ij->i", za, zb)
    flat_a, flat_b = sa < FLAT_STD, sb < FLAT_STD
    out[flat_a | flat_b] = 0.0
    out[flat_a & flat_b & (np.abs(ma - mb) <= 4)] = 1.0
    return out


def _candidates(prints: Prints, near: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Index pairs ``i < j`` whose perceptual hashes are at most ``near`` bits apart (both near_ok), in blocks."""
    idx = np.flatnonzero(prints.near_ok)
    if len(idx) < 2:
        return
    distinct, inverse = np.unique(prints.phash[idx], return_inverse=True)
    order = idx[np.argsort(inverse, kind="stable")]  # images grouped by hash
    counts = np.bincount(inverse, minlength=len(distinct))
    starts = np.cumsum(counts) - counts
    same = np.flatnonzero(counts > 1)  # images sharing one hash pair up among themselves
    for a, b in itertools.chain([(same, same)], near_pair_blocks(distinct, near)):
        yield from _expanded(a, b, order, counts, starts, len(prints))


def _expanded(a: np.ndarray, b: np.ndarray, order: np.ndarray, counts: np.ndarray, starts: np.ndarray,
              n: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """The image pairs of the hash pairs ``(a, b)`` (indices into the distinct hashes), in blocks of about
    :data:`CHUNK` image pairs: a block of a fixed number of hash pairs held up to millions of image pairs where
    many images share a hash (photos cropped from a few pictures)."""
    per_all = counts[a] * counts[b]
    block = (np.cumsum(per_all) - per_all) // CHUNK  # the block each hash pair's image pairs start in
    edges = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if len(a) else np.zeros(0, np.int64)
    for k0, k1 in zip(edges, np.r_[edges[1:], len(a)]):
        ha, hb = a[k0:k1], b[k0:k1]
        per = counts[ha] * counts[hb]
        which = np.repeat(np.arange(len(ha)), per)
        offset = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
        ii = order[starts[ha][which] + offset // counts[hb][which]]
        jj = order[starts[hb][which] + offset % counts[hb][which]]
        keep = ii != jj
        ii, jj = ii[keep], jj[keep]
        lo, hi = np.minimum(ii, jj), np.maximum(ii, jj)
        if (ha == hb).any():  # within one hash every pair came twice
            keys = _distinct(lo * n + hi)
            lo, hi = keys // n, keys % n
        yield lo, hi


PREFILTER = 0.97  # 16x16 correlation below which a candidate is not looked at in full (copies measure 0.99+)


def _coarse(thumbs: np.ndarray) -> np.ndarray:
    """16x16 versions of 32x32 thumbnails (2x2 means): a cheap first look at a candidate pair."""
    side = THUMB_SIDE // 2
    coarse = thumbs.reshape(len(thumbs), side, 2, side, 2).astype(np.float32).mean((2, 4))
    return coarse.reshape(len(thumbs), side * side)


def _coarse_prints(prints: Prints, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The normalised 16x16 thumbnail of every image that near copies are looked for (zeros elsewhere) and whether
    it is flat: the cheap first look at a candidate pair (1 kB an image). Made ``chunk`` images at a time: the float
    copies of all the 32x32 thumbnails at once were 5 kB an image, the largest memory of a check at 60,000 images.
    Made per candidate pair instead it took 7x as long there (Fashion-MNIST has millions of candidates)."""
    z = np.zeros((len(prints), (THUMB_SIDE // 2) ** 2), np.float32)
    flat = np.zeros(len(prints), bool)
    for start in range(0, len(prints), chunk):
        ok = np.flatnonzero(prints.near_ok[start:start + chunk]) + start
        z[ok], _, std = _normalised(_coarse(prints.thumbs[ok]))
        flat[ok] = std < FLAT_STD
    return z, flat


def _confirmed(prints: Prints, coarse: tuple[np.ndarray, np.ndarray], ii: np.ndarray,
               jj: np.ndarray) -> Iterator[tuple[int, int, float]]:
    """The candidate pairs ``(ii, jj)`` that are copies, with their similarity: the 16x16 look first
    (:func:`_coarse_prints`), then the full thumbnails of the pairs that pass it, 4,096 pairs at a time (each
    holds four float copies of a 32x32 thumbnail: 16 kB)."""
    z, flat = coarse
    look = flat[ii] | flat[jj]
    for k in range(0, len(ii), 4096):  # z[ii] and z[jj] of a whole block of 65,536 pairs were 134 MB
        a, b = ii[k:k + 4096], jj[k:k + 4096]
        look[k:k + 4096] |= np.einsum("ij,ij->i", z[a], z[b]) >= PREFILTER
    ii, jj = ii[look], jj[look]
    for k in range(0, len(ii), 4096):
        a, b = ii[k:k + 4096], jj[k:k + 4096]
        sim = similarity(prints.thumbs[a], prints.thumbs[b])
        keep = sim >= MIN_SIMILARITY
        yield from zip(a[keep].tolist(), b[keep].tolist(), sim[keep].tolist())


def confirmed_pairs(prints: Prints, mode: str = "near", near: int = NEAR_BITS,
                    between: int | None = None) -> list[tuple[int, int, float]]:
    """``(i, j, similarity)`` for each pair of copies among ``prints``, ``i < j``; similarity 1.0 for the same bytes.

    Args:
        mode: ``near`` (same bytes, or confirmed near copies), ``exact`` (same bytes) or ``off`` (none).
        near: most bits perceptual hashes of a candidate pair may differ by.
        between: only pairs with ``i < between <= j`` (two sets joined with :meth:`Prints.join`).
    """
    if mode not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_MODES)}, got '{mode}'.")
    if mode == "off":
        return []
    found: dict[tuple[int, int], float] = {}
    by_sha = defaultdict(list)
    for i, sha in enumerate(prints.sha):
        if sha:
            by_sha[sha].append(i)
    for same in by_sha.values():
        left = [i for i in same if between is None or i < between]
        right = [j for j in same if between is None or j >= between]
        for i in left[:1] if between is None else left:  # same bytes is transitive: a star joins a group
            for j in right:
                if i < j:
                    found[i, j] = 1.0
    if mode == "near":
        coarse = _coarse_prints(prints)
        for ii, jj in _candidates(prints, near):
            if between is not None:
                keep = (ii < between) & (jj >= between)
                ii, jj = ii[keep], jj[keep]
            for i, j, s in _confirmed(prints, coarse, ii, jj):
                found.setdefault((i, j), round(s, 4))
    return [(i, j, s) for (i, j), s in sorted(found.items())]


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


def group_duplicates(facts: Sequence[Fingerprinted], mode: str = "near",
                     near: int = NEAR_BITS) -> tuple[list[list[int]], list[tuple[int, int, float]]]:
    """Indices into ``facts`` (all readable) of each group of copies, two or more, in index order, and the confirmed
    pairs that joined them. Groups chain confirmed pairs (a split keeps a chain whole); nothing is dropped through
    them."""
    pairs = confirmed_pairs(Prints.of_facts(facts), mode, near)
    return _connected(len(facts), ((i, j) for i, j, _ in pairs)), pairs


def duplicate_groups(facts: dict[str, Fingerprinted], mode: str = "near", near: int = NEAR_BITS) -> list[list[str]]:
    """The paths of each group (two or more) of copies among the readable files of ``facts``.

    Args:
        facts: what ``check.inspect_files`` found, by path; files it could not read are left out.
        mode, near: see :func:`confirmed_pairs`.
    """
    paths = [p for p, f in facts.items() if f.error is None]
    groups, _ = group_duplicates([facts[p] for p in paths], mode, near)
    return [[paths[i] for i in g] for g in groups]


def leak_proof_split(splits: DataSplits, facts: dict[str, Fingerprinted], val_fraction: float, seed: int,
                     mode: str = "near") -> DataSplits:
    """``splits`` with its validation split made again so that no group of copies has images on both sides.

    Train and val are pooled and split stratified (``stratified_split``) with each group whole; test is left as it
    is (its copies of training images are ``drop_leaked``'s business). When no group straddles train and val the
    splits come back unchanged, so runs on data without leaks keep the split they always had.

    Args:
        splits: from ``discover``, with a validation split headstart made (``val_made``).
        facts: ``check.inspect_files`` of at least the train and val images; paths without facts count as unique.
        val_fraction: share of each class to hold out, as given to ``discover``.
        seed: makes the split repeatable.
        mode: see :func:`confirmed_pairs`.
    """
    if not splits.val_made:
        raise DataError("leak_proof_split re-splits a validation split headstart made, but this one was given "
                         f"({splits.layout}); use drop_leaked to remove its copies of training images instead.")
    pool = splits.train + splits.val
    found = duplicate_groups({p: facts[p] for p, _ in pool if p in facts}, mode)
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


def fingerprints(facts: dict[str, Fingerprinted], paths: Iterable[str], split: str | None = None) -> dict[str, dict]:
    """What :func:`copies_of` needs to know of ``paths``, JSON-ready: ``{path: {"sha", "phash", "phash_ok",
    "thumb"}}`` (and ``"split"`` when given).

    The perceptual hash is written as 16 hex digits (a 64-bit integer loses bits in readers that use doubles), the
    thumbnail in base64. Paths without facts, or whose file could not be read, are left out.
    """
    return {p: {"sha": f.sha, "phash": f"{f.phash:016x}", "phash_ok": f.phash_ok,
                "thumb": base64.b64encode(f.thumb).decode("ascii"), **({"split": split} if split else {})}
            for p in paths if (f := facts.get(p)) is not None and f.error is None}


def copies_of(reference: dict[str, dict], facts: dict[str, Fingerprinted], mode: str = "near") -> dict[str, dict]:
    """The paths in ``facts`` that are themselves a confirmed copy of one of ``reference``'s images (no chains),
    each with the reference image it copies (the most similar) and the similarity:
    ``{path: {"copy_of", "similarity"}}``.

    Args:
        reference: ``fingerprints`` of the images to compare against, e.g. those a run was fitted on.
        facts: ``check.inspect_files`` of the images to check; unreadable ones are never copies.
        mode: see :func:`confirmed_pairs`.
    """
    ref_paths = list(reference)
    paths = [p for p, f in facts.items() if f.error is None]
    if not ref_paths or not paths:
        return {}
    joined = Prints.of_records([reference[p] for p in ref_paths]).join(Prints.of_facts([facts[p] for p in paths]))
    out: dict[str, dict] = {}
    for i, j, s in confirmed_pairs(joined, mode, between=len(ref_paths)):
        path = paths[j - len(ref_paths)]
        if path not in out or s > out[path]["similarity"]:
            out[path] = {"copy_of": ref_paths[i], "similarity": s}
    return out


def duplicates_of(reference: dict[str, dict], facts: dict[str, Fingerprinted], mode: str = "near") -> set[str]:
    """The paths of :func:`copies_of`."""
    return set(copies_of(reference, facts, mode))


LOUD_SHARE = 0.03  # a class losing more than this share of its held-out images is said loudly


def drop_leaked(splits: DataSplits, facts: dict[str, Fingerprinted], mode: str = "near",
                reference: Sequence[str] = ("train",),
                held_out: Sequence[str] = ("val", "test")) -> tuple[DataSplits, dict]:
    """Removes from ``held_out`` splits the images that are confirmed copies of an image of the ``reference``
    splits (those the model is fitted on).

    For splits that were given (split folders, a CSV with a split column): training keeps every image and the
    held-out figures are measured on pictures the model has not seen. Copies between val and test are left alone
    here, as long as val only chooses; once a refit trains on val, ``reference=("val",), held_out=("test",)``
    removes them too.

    Returns:
        The splits without those images, and the record: ``{"val": [...], "test": [...]}`` removed paths, plus
        ``"copy_of"`` (removed path -> the fitted image it copies), ``"label_conflicts"`` (those whose label differs
        from their copy's) and ``"removed_share"`` (split -> class -> share of its images removed, where any were).
    """
    labelled = {p: y for name in reference for p, y in getattr(splits, name)}
    reference_prints = fingerprints(facts, labelled)
    candidates = {p: facts[p] for name in held_out for p, _ in getattr(splits, name) if p in facts}
    copies = copies_of(reference_prints, candidates, mode)
    record: dict = {name: list(dict.fromkeys(p for p, _ in getattr(splits, name) if p in copies))
                    for name in held_out}
    record["copy_of"] = {p: c["copy_of"] for p, c in copies.items()}
    record["label_conflicts"] = [
        {"path": p, "label": splits.classes[y], "copy_of": copies[p]["copy_of"],
         "copy_label": splits.classes[labelled[copies[p]["copy_of"]]]}
        for name in held_out for p, y in getattr(splits, name)
        if p in copies and labelled[copies[p]["copy_of"]] != y]
    record["removed_share"] = {}
    for name in held_out:
        total, gone = Counter(), Counter()
        for p, y in getattr(splits, name):
            total[splits.classes[y]] += 1
            gone[splits.classes[y]] += p in copies
        if any(gone.values()):
            record["removed_share"][name] = {c: round(gone[c] / total[c], 4) for c in total if gone[c]}
    kept = replace(splits, **{name: [s for s in getattr(splits, name) if s[0] not in copies] for name in held_out})
    return kept, record


def loud_classes(record: dict) -> list[str]:
    """``"test/sneaker 12%"`` for each split and class of a ``drop_leaked`` record that lost more than
    ``LOUD_SHARE`` of its images."""
    return [f"{split}/{name} {share:.0%}" for split, shares in record.get("removed_share", {}).items()
            for name, share in shares.items() if share > LOUD_SHARE]
