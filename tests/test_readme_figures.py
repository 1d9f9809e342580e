"""The README's measured figures are rendered from the stored result files (scripts/readme_figures.py): a figure
edited by hand, or a result file replaced without rendering again, fails here."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def test_readme_figures_are_those_rendered_from_docs_measurements():
    readme = (ROOT / "README.md").read_text()
    assert figures.render(readme) == readme, "README.md is stale: run python scripts/readme_figures.py"
    assert figures.main(["--check"]) == 0


def test_a_changed_result_file_makes_the_check_fail(tmp_path):
    readme = (ROOT / "README.md").read_text()
    for name, (source, _) in figures.FIGURES.items():
        shutil.copy2(figures.MEASUREMENTS / source, tmp_path / source)
    refit = json.loads((tmp_path / "refit_64px.json").read_text())
    for row in refit["rows"]:
        row["refit_acc"] += 0.01  # one point more for every seed and budget
    (tmp_path / "refit_64px.json").write_text(json.dumps(refit))
    rendered = figures.render(readme, tmp_path)
    assert rendered != readme
    before = figures.refit_gains(json.loads((figures.MEASUREMENTS / "refit_64px.json").read_text()), "x")
    after = figures.refit_gains(refit, "x")
    assert before.split()[0] != after.split()[0]  # the first gain moved by one point


def test_the_refit_sentence_is_the_mean_gain_per_budget():
    result = {"rows": [{"labels_per_class": n, "seed": s, "no_refit_acc": 0.70, "sklearn_c1_acc": 0.75,
                        "refit_acc": 0.70 + 0.01 * n + 0.002 * s} for n in (1, 5) for s in range(3)]}
    text = figures.refit_gains(result, "r.json")
    assert "+1.2 and +5.2 test points at 1 and 5 labels per class (mean of 3 seeds" in text
    assert "−3.8 and +0.2 points" in text


def test_a_missing_marker_is_an_error():
    with pytest.raises(SystemExit, match="figures:refit"):
        figures.render("no markers here")
