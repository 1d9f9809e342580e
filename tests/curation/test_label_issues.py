"""check --labels: out-of-fold probabilities, confident learning, the CSV, the page and the run report's section."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from headstart.cli import main
from headstart.core.errors import DataError
from headstart.curation.label_issues import (
    COLUMNS,
    DEFAULT_BACKBONES,
    confident_learning,
    label_backbones,
    out_of_fold_probabilities,
)
from headstart.report.label_issues import read_rows, section_body


def _blobs(per_class=40, classes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, (classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y


def test_planted_flips_in_separable_features_are_found_and_clean_labels_kept():
    x, y = _blobs()
    noisy = y.copy()
    planted = np.array([3, 50, 90, 130, 150])
    noisy[planted] = (y[planted] + 1) % 4
    probs, folds, settings = out_of_fold_probabilities(x, noisy, list("abcd"))
    assert folds == 5 and probs.shape == (160, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    flagged, quality = confident_learning(probs, noisy)
    assert set(flagged.tolist()) == set(planted.tolist())
    assert quality[planted].max() < np.delete(quality, planted).min()  # the planted ones rank lowest


def test_the_probe_reads_the_offline_lites_by_default_or_the_backbones_named(monkeypatch):
    from headstart.curation import label_issues

    assert label_backbones() == list(DEFAULT_BACKBONES)  # all three ship in pip packages, installed by setup
    assert label_backbones("resnet50") == ["resnet50"] and label_backbones(["a", "b"]) == ["a", "b"]
    monkeypatch.setattr(label_issues, "weights_available", lambda spec: None)  # none on this machine
    assert label_backbones() == ["efficientnet_lite0"]


def test_a_class_with_one_image_is_refused_in_one_sentence():
    x, y = _blobs(per_class=6, classes=3)
    y[-6:-1] = 0  # class 2 keeps a single image
    with pytest.raises(DataError, match=r"class c has a single labelled image; .* at least 2 per class"):
        out_of_fold_probabilities(x, y, list("abc"))


def test_run_without_labels_is_refused_in_one_sentence(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["check", str(tmp_path), "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "add --labels" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_section_body_lists_rows_and_says_when_there_are_none(tmp_path):
    picture = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(picture)
    rows = [{"path": str(picture), "given_label": "cat", "suggested_label": "dog", "label_quality": "0.01",
             "kind": "confident-learning"}]
    html = section_body(rows, "label_issues.csv")
    assert "<img" in html and "suggested" in html and "dog" in html and "label_issues.csv" in html
    assert "No label looks wrong" in section_body([], "label_issues.csv")
    assert read_rows(tmp_path / "absent.csv") == []


def _digits_folder(root, per_class=30):
    """scikit-learn's digits as PNGs, with one planted flip per class (to class c + 5) and one copy of an image
    filed under another class; returns the folder and the planted paths."""
    from sklearn.datasets import load_digits

    d = load_digits()
    planted = []
    for c in range(10):
        for k, i in enumerate(np.flatnonzero(d.target == c)[:per_class]):
            label = (c + 5) % 10 if k == 0 else c
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            path = root / str(label) / f"d{i:04d}.png"
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(path)
            if k == 0:
                planted.append(str(path))
    shutil.copy(root / "1" / sorted(p.name for p in (root / "1").iterdir())[3], root / "7" / "copy_of_a_one.png")
    return root, planted


@pytest.mark.slow
def test_check_labels_finds_planted_flips_in_digits_and_writes_csv_and_page(tmp_path, capsys):
    data, planted = _digits_folder(tmp_path / "digits")
    out = tmp_path / "found"
    code = main(["check", str(data), "--labels", "--labels-out", str(out), "--image-size", "64", "--workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "labels look wrong" in printed and "label_issues.csv" in printed
    with open(out / "label_issues.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    flagged = [r["path"] for r in rows if r["kind"] == "confident-learning"]
    hits = set(flagged) & set(planted)
    assert len(hits) >= 6, (len(hits), flagged)  # of 10 planted (3.3% of 301 labels)
    assert len(hits) >= 0.6 * len(flagged)
    conflicts = [r for r in rows if r["kind"] == "label-conflict"]
    assert {r["given_label"] for r in conflicts} == {"1", "7"} and all("a copy of" in r["detail"] for r in conflicts)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    page = (out / "label_issues.html").read_text()
    assert page.count("<img") == min(len(rows), 48) and "Labels that look wrong" in page
    # by default the probe reads the three offline Lites side by side, each at the size asked
    assert "efficientnet_lite0 at 64 px, efficientnet_lite1 at 64 px and efficientnet_lite2 at 64 px, side by " \
           "side" in page and "under 0.05 probability" in page


@pytest.mark.slow
def test_check_labels_attached_to_a_run_shows_in_its_report(probe_run, capsys):
    data, run = probe_run
    zero = sorted((data / "0").glob("*.png"))[0]
    moved = data / "1" / "really_a_zero.png"  # a planted wrong label
    shutil.copy(zero, moved)
    zero.unlink()
    try:
        assert main(["check", str(data), "--labels", "--run", str(run), "--workers", "0"]) == 0
    finally:
        shutil.copy(moved, zero)
        moved.unlink()
    rows = read_rows(run / "label_issues.csv")
    assert rows and rows[0]["path"] == str(moved) and rows[0]["suggested_label"] == "0"
    report = (run / "report.html").read_text()
    assert "Labels that look wrong" in report and "really_a_zero.png" in report
    assert "report.html shows them" in capsys.readouterr().out


@pytest.mark.parametrize("given, passed", [(None, "auto"), ("0.3", 0.3), ("1", None)])
def test_max_given_reaches_the_single_label_check(tmp_path, monkeypatch, given, passed):
    """``--max-given P``: the cut-off passed on (1 keeps every flag: None); left out, the library's default."""
    from headstart.curation import label_issues
    from tests.curation.conftest import digits_folder

    data = digits_folder(tmp_path / "d")
    seen = {}

    def fake(splits, runtime, model, size, folds, seed, max_given="auto", **kw):
        seen["max_given"] = max_given
        return label_issues.LabelIssues([], splits.classes, 0, folds, 1.0,
                                        {"backbone": "x", "image_size": 8, "max_given": max_given})

    monkeypatch.setattr(label_issues, "find_label_issues", fake)
    args = ["check", str(data), "--labels", "--labels-out", str(tmp_path / "out")]
    assert main(args + (["--max-given", given] if given else [])) == 0
    assert seen == {"max_given": passed}


def test_a_max_given_outside_0_to_1_is_refused_in_one_sentence(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["check", str(tmp_path), "--labels", "--max-given", "5"]) == 2
    err = capsys.readouterr().err
    assert "--max-given must be a probability" in err and len(err.strip().splitlines()) == 1
