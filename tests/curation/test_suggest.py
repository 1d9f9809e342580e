"""suggest: uncertainty, the k-center pass that keeps copies out of one batch, and the command end to end."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from headstart.cli import main
from headstart.core.errors import UsageError
from headstart.curation.suggest import COLUMNS, k_center_greedy, rank_for_labelling, uncertainty
from tests.curation.conftest import digits_folder


def test_uncertainty_margin_and_entropy():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.allclose(uncertainty(probs, "margin"), [0.0, 1.0, 1.0])
    assert np.allclose(uncertainty(probs, "entropy"), [0.0, np.log(2) / np.log(3), 1.0], atol=1e-6)
    with pytest.raises(UsageError, match="margin, entropy"):
        uncertainty(probs, "variance")


def test_k_center_never_puts_two_near_copies_in_one_batch():
    rng = np.random.default_rng(0)
    originals = rng.normal(size=(20, 64))
    copies = np.repeat(originals, 5, axis=0) + rng.normal(0, 1e-3, (100, 64))  # 5 near-copies of each
    picked = k_center_greedy(copies, 20)
    assert sorted(i // 5 for i in picked) == list(range(20))  # one of each group
    assert len(k_center_greedy(copies, 30)) == 20  # no 21st distinct image: a shorter batch, not a copy


def test_rank_prefers_uncertain_images_and_spreads_them():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 32))
    u = np.linspace(0, 1, 200)  # the last images are the most uncertain
    emb[190:] = emb[199] + rng.normal(0, 1e-4, (10, 32))  # ...and the ten most uncertain are one picture
    order = rank_for_labelling(u, lambda idx: emb[idx], 5, pool_factor=3)
    assert len(order) == 5 and order[0] == 199
    assert sum(i >= 190 for i in order) == 1 and all(i >= 185 for i in order)


@pytest.mark.slow
def test_suggest_command_writes_a_csv_copies_images_and_leaves_out_copies(probe_run, tmp_path, capsys):
    data, run = probe_run
    pool = digits_folder(tmp_path / "pool", classes=(0, 1, 7, 4), per_class=4, start=20)
    originals = sorted(pool.rglob("*.png"))
    for p in originals:  # an exact copy and a copy with one pixel changed (other bytes) of every unlabelled image
        shutil.copy(p, p.with_name(f"copy_{p.name}"))
        pixels = np.array(Image.open(p))
        pixels[0, 0] ^= 1
        Image.fromarray(pixels).save(p.with_name(f"edit_{p.name}"))
    labelled = sorted((data / "7").glob("*.png"))[0]
    shutil.copy(labelled, pool / "7" / "already_labelled.png")  # a copy of an image the run was fitted on
    capsys.readouterr()
    out, dest = tmp_path / "next.csv", tmp_path / "to_label"
    assert main(["suggest", str(run), str(pool), "--n", "20", "--out", str(out), "--copy-to", str(dest),
                 "--workers", "0"]) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    stems = [p.rsplit("/", 1)[1].removeprefix("copy_").removeprefix("edit_").rsplit(".", 1)[0] for p in
             (r["path"] for r in rows)]
    assert 1 <= len(rows) <= len(originals) and len(set(stems)) == len(stems)  # never two copies of one picture
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["predicted_label"] in {"0", "1", "7"} for r in rows)
    assert len(list(dest.iterdir())) == len(rows)
    assert "left out 1 image(s) the run was fitted on" in capsys.readouterr().out
    assert not any("already_labelled" in r["path"] for r in rows)

    assert main(["suggest", str(run), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_streaming_in_small_chunks_gives_the_same_suggestions(probe_run, tmp_path):
    from headstart.curation.suggest import suggest

    _, run = probe_run
    pool = digits_folder(tmp_path / "pool", classes=(0, 1, 7), per_class=5, start=40)
    whole = suggest(run, pool, n=6, workers=0)
    streamed = suggest(run, pool, n=6, workers=0, chunk=4)  # 15 images through the cache 4 at a time
    assert whole.images == streamed.images == 15
    assert [r["path"] for r in whole.rows] == [r["path"] for r in streamed.rows] and len(whole.rows) == 6
