"""headstart compare: every strategy sees the same subsets and test images; outputs are complete."""

import csv
import json

import pytest

from headstart.cli import main
from tests.conftest import make_class_folder


@pytest.mark.slow
def test_compare_runs_every_cell_on_the_same_images(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=14, size=32)
    out = tmp_path / "cmp"
    code = main(["compare", str(data), "--out", str(out), "--strategies", "scratch,linear-probe",
                 "--labels-per-class", "2,4", "--seeds", "2", "--val-per-class", "2", "--epochs", "1",
                 "--scratch-epochs", "2", "--image-size", "64", "--batch-size", "8"])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2
    assert {(r["strategy"], r["labels_per_class"]) for r in result["rows"]} == \
        {(s, n) for s in ("scratch", "linear-probe") for n in (2, 4)}
    assert all(r["seeds"] == 2 for r in result["rows"])
    assert {r["model"] for r in result["runs"] if r["strategy"] == "scratch"} == {"resnet20"}
    assert {r["model"] for r in result["runs"] if r["strategy"] == "linear-probe"} == {"efficientnet_lite0"}
    # Same test images for every subset; training subsets of the right size, disjoint from validation.
    tests, sizes = set(), {}
    for manifest in (out / "subsets").glob("*.csv"):
        rows = list(csv.DictReader(manifest.open()))
        tests.add(frozenset(r["path"] for r in rows if r["split"] == "test"))
        train = {r["path"] for r in rows if r["split"] == "train"}
        assert not train & {r["path"] for r in rows if r["split"] == "val"}
        sizes[manifest.stem] = len(train)
    assert len(tests) == 1 and len(next(iter(tests))) == result["test_images"] > 0
    assert sizes == {"n2-seed0": 6, "n4-seed0": 12, "n2-seed1": 6, "n4-seed1": 12}
    for name in ("compare.md", "accuracy_vs_labels.png", "accuracy_vs_time.png"):
        assert (out / name).stat().st_size > 100
    assert "test accuracy" in capsys.readouterr().out


def test_compare_rejects_unknown_strategy(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=2)
    assert main(["compare", str(data), "--out", str(tmp_path / "o"), "--strategies", "scratch,magic"]) == 2
    assert "magic" in capsys.readouterr().err
