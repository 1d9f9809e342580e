"""Multi-label data: both CSV forms, one sentence per bad row, splits that keep every label on both sides."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from headstart.core.errors import DataError
from headstart.data.mosaic import make_mosaic_set
from headstart.data.multilabel import (
    MultiLabelSplits,
    check_multilabel,
    discover_multilabel,
    draw_subset,
    is_multilabel_csv,
    iterative_split,
    missing_labels,
    random_split,
)


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> Path:
    return make_mosaic_set(tmp_path_factory.mktemp("mosaic"), train=120, test=0, classes=6, seed=1)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_labels_column_and_one_column_per_label_read_the_same(mosaics):
    splits = discover_multilabel(mosaics)
    labels = splits.labels
    rows = [[p, *(str(v) for v in y)] for p, y in splits.train + splits.val]
    wide = _write(mosaics.parent / "wide.csv", ["path", *labels], rows)
    assert is_multilabel_csv(mosaics) and is_multilabel_csv(wide)
    again = discover_multilabel(wide)
    assert again.labels == labels
    assert dict(again.train + again.val) == dict(splits.train + splits.val)


def test_a_single_label_csv_is_not_taken_for_multi_label(tmp_path):
    assert not is_multilabel_csv(_write(tmp_path / "m.csv", ["path", "label"], [["a.png", "cat"]]))


def test_the_label_delimiter_is_the_users(mosaics, tmp_path):
    rows = list(csv.reader(open(mosaics)))[1:]
    piped = _write(mosaics.parent / "piped.csv", ["path", "labels"], [[p, ys.replace(";", "|")] for p, ys in rows])
    assert discover_multilabel(piped, delimiter="|").train == discover_multilabel(mosaics).train


def test_bad_rows_are_one_sentence_each(mosaics):
    rows = list(csv.reader(open(mosaics)))[1:]
    common = max({y for _, ys in rows for y in ys.split(";")}, key=lambda y: sum(y in ys for _, ys in rows))
    typo = common[1] + common[0] + common[2:]  # two letters swapped, seen once
    bad = _write(mosaics.parent / "bad.csv", ["path", "labels"],
                 rows[:40] + [["images/nowhere.png", common], [rows[41][0], ""], [rows[42][0], typo]])
    splits = discover_multilabel(bad)
    report = check_multilabel(splits, bad, duplicates="exact")
    by_kind = {i.kind: i.message for i in report.issues}
    assert "nowhere.png does not exist" in by_kind["bad-row"] and by_kind["bad-row"].count(".") <= 3
    assert "has no label" in by_kind["no-label"]
    assert f"'{typo}'" in by_kind["label-typo"] and f"typo of '{common}'" in by_kind["label-typo"]
    assert report.verdict == "problems"  # the row that names a missing file cannot be used
    assert all(p not in dict(splits.train + splits.val) for p in [str(bad.parent / "images/nowhere.png")])


def test_a_csv_without_labels_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(DataError, match="needs a 'path' column"):
        discover_multilabel(_write(tmp_path / "x.csv", ["file", "labels"], [["a.png", "x"]]))


def test_iterative_split_keeps_every_label_on_both_sides_where_random_does_not(mosaics):
    splits = discover_multilabel(mosaics)
    pool = splits.train + splits.val
    rare = [(p, y[:-1] + (1,)) if i < 3 else (p, y[:-1] + (0,)) for i, (p, y) in enumerate(pool)]  # 3 positives
    missed_iterative = sum(len(missing_labels(splits.labels, *iterative_split(rare, 0.2, s))) for s in range(10))
    missed_random = sum(len(missing_labels(splits.labels, *random_split(rare, 0.2, s))) for s in range(10))
    assert missed_iterative == 0
    assert missed_random > 0


def test_draw_subset_is_exact_and_gives_a_rare_label_a_positive_where_stratification_alone_does_not(mosaics):
    splits = discover_multilabel(mosaics)
    pool = splits.train + splits.val
    rare = [(p, y[:-1] + (int(i < 3),)) for i, (p, y) in enumerate(pool)]  # the last label on 3 of 120 images
    present = np.asarray([y for _, y in rare]).sum(0) > 0
    missed_alone = 0
    for n in (6, 10, 25):
        for seed in range(5):
            drawn, rest = draw_subset(rare, n, seed)
            assert len(drawn) == n and sorted(drawn + rest) == sorted(rare) and not set(drawn) & set(rest)
            assert (np.asarray([y for _, y in drawn]).sum(0) > 0).tolist() == present.tolist()
            assert draw_subset(rare, n, seed) == (drawn, rest)  # repeatable
            _, held = iterative_split(rare, n / len(rare), seed)
            missed_alone += not any(y[-1] for _, y in held)
    assert missed_alone > 0  # the share of a rare label in a small draw rounds to none
    one, _ = draw_subset(rare, 1, 0)  # too few images for every label: as many as one image can hold
    assert len(one) == 1 and sum(one[0][1]) >= 1
    assert draw_subset(rare, 500, 0) == (sorted(rare), [])


def test_groups_of_copies_stay_on_one_side(mosaics):
    pool = discover_multilabel(mosaics).train
    groups = {p: k // 4 for k, (p, _) in enumerate(pool[:40])}
    keep, held = iterative_split(pool, 0.25, 0, groups)
    side = {p: 0 for p, _ in keep} | {p: 1 for p, _ in held}
    for g in set(groups.values()):
        assert len({side[p] for p, k in groups.items() if k == g}) == 1
    assert len(keep) + len(held) == len(pool) and 0.15 < len(held) / len(pool) < 0.35


def test_split_record_round_trips(mosaics):
    splits = discover_multilabel(mosaics)
    again = MultiLabelSplits.from_json(splits.to_json())
    assert again.train == [(str(Path(p).resolve()), y) for p, y in splits.train]
    assert np.array_equal(list(splits.counts("val").values()), list(again.counts("val").values()))
