"""Leak-proof splits: duplicates stay on one side of a split headstart makes, and leave given val/test splits."""

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from headstart.data.check import FileFacts, check, inspect_files
from headstart.data.leakage import (
    copies_of,
    drop_leaked,
    duplicate_groups,
    duplicates_of,
    fingerprints,
    group_duplicates,
    leak_proof_split,
    loud_classes,
    similarity,
)
from headstart.data.rundir import RunDir
from headstart.data.sources import DataSplits, discover, stratified_split
from headstart.evaluation.metrics import evaluate_run
from headstart.predict.run import load_run
from headstart.training.train import TrainConfig, train
from tests.conftest import make_class_folder

CLASSES = ("ant", "bee", "cat")


def picture(seed: int, size: int = 96) -> Image.Image:
    """A picture no other resembles, smooth enough that re-encoding or brightening keeps its perceptual hash close
    (measured: JPEG quality 70 within 2 bits, brightness x1.15 within 4; unrelated pictures 18 or more apart)."""
    rng = np.random.default_rng(1000 + seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size),
                                                                                    Image.Resampling.BICUBIC)
    return Image.fromarray((np.asarray(coarse, float) + rng.normal(0, 12, (size, size, 3))).clip(0, 255)
                           .astype(np.uint8))


def write_pictures(root: Path, per_class: int, first_seed: int = 0) -> Path:
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture(first_seed + 100 * c + i).save(root / name / f"{name}_{i:02d}.png")
    return root


def exact_copy(src: Path, dest: Path) -> Path:
    shutil.copy(src, dest)
    return dest


def reencoded(src: Path, dest: Path, quality: int = 70) -> Path:
    Image.open(src).convert("RGB").save(dest, quality=quality)
    return dest


def brightened(src: Path, dest: Path) -> Path:
    ImageEnhance.Brightness(Image.open(src)).enhance(1.1).save(dest)
    return dest


def facts_of(splits: DataSplits) -> dict:
    return inspect_files([p for s in ("train", "val", "test") for p, _ in getattr(splits, s)], workers=2)


def as_sets(groups) -> set[frozenset[str]]:
    return {frozenset(g) for g in groups}


@pytest.fixture(scope="module")
def folders_with_duplicates(tmp_path_factory) -> tuple[Path, set[frozenset[str]]]:
    """Class folders of 12 pictures each, with planted groups: exact copies, a JPEG re-encode (also saved once
    more at another quality), a brightened copy, and a group that mixes all three."""
    root = write_pictures(tmp_path_factory.mktemp("leak") / "data", per_class=12)
    planted = set()
    for name in CLASSES:
        d = root / name
        planted.add(frozenset(map(str, [d / f"{name}_00.png", exact_copy(d / f"{name}_00.png", d / "copy_00.png")])))
        jpeg = reencoded(d / f"{name}_01.png", d / "jpeg_01.jpg", quality=90)
        planted.add(frozenset(map(str, [d / f"{name}_01.png", jpeg, reencoded(jpeg, d / "jpeg_01_q70.jpg")])))
        planted.add(frozenset(map(str, [d / f"{name}_02.png", brightened(d / f"{name}_02.png", d / "bright_02.png")])))
        planted.add(frozenset(map(str, [d / f"{name}_03.png", exact_copy(d / f"{name}_03.png", d / "z_copy_03.png"),
                                         reencoded(d / f"{name}_03.png", d / "z_jpeg_03.jpg"),
                                         brightened(d / f"{name}_03.png", d / "z_bright_03.png")])))
    return root, planted


def test_duplicate_groups_finds_the_planted_groups_and_nothing_else(folders_with_duplicates):
    root, planted = folders_with_duplicates
    facts = facts_of(discover(root))
    assert as_sets(duplicate_groups(facts)) == planted
    # exact still finds byte copies; unreadable files never group (they all share an empty hash)
    exact = as_sets(duplicate_groups(facts, "exact"))
    assert all(any(g <= p for p in planted) for g in exact)
    assert frozenset({str(root / "ant" / "ant_00.png"), str(root / "ant" / "copy_00.png")}) in exact


@pytest.mark.parametrize("seed", range(6))
def test_leak_proof_split_keeps_every_group_on_one_side(folders_with_duplicates, seed):
    root, planted = folders_with_duplicates
    splits = discover(root, val_fraction=0.25, seed=seed)
    assert splits.val_made
    facts = facts_of(splits)
    fixed = leak_proof_split(splits, facts, 0.25, seed)
    train, val = {p for p, _ in fixed.train}, {p for p, _ in fixed.val}
    for group in planted:
        assert group <= train or group <= val, f"seed {seed}: {sorted(group)} split across train and val"
    assert sorted(fixed.train + fixed.val) == sorted(splits.train + splits.val)  # nothing lost, nothing added
    assert fixed.test == splits.test and fixed.classes == splits.classes and fixed.val_made
    for name, n in fixed.counts("val").items():  # still stratified: about a quarter of each class's 18 images
        assert 3 <= n <= 6, (name, n)
    assert leak_proof_split(splits, facts, 0.25, seed) == fixed  # repeatable


def test_the_old_split_did_leak_and_a_split_without_leaks_is_kept(folders_with_duplicates, tmp_path):
    root, planted = folders_with_duplicates
    leaked = 0
    for seed in range(6):
        splits = discover(root, val_fraction=0.25, seed=seed)
        train = {p for p, _ in splits.train}
        leaked += sum(bool(g & train) and not g <= train for g in planted)
    assert leaked > 0  # otherwise the test above would prove nothing
    clean = discover(write_pictures(tmp_path / "clean", per_class=6), val_fraction=0.25, seed=0)
    assert leak_proof_split(clean, facts_of(clean), 0.25, 0) is clean


def test_leak_proof_split_leaves_given_test_images_alone(tmp_path):
    train = write_pictures(tmp_path / "d" / "train", per_class=8)
    test = write_pictures(tmp_path / "d" / "test", per_class=2, first_seed=50)
    exact_copy(train / "ant" / "ant_00.png", train / "ant" / "copy.png")
    exact_copy(train / "bee" / "bee_00.png", test / "bee" / "copy.png")
    splits = discover(tmp_path / "d", val_fraction=0.5, seed=1)
    assert splits.val_made
    fixed = leak_proof_split(splits, facts_of(splits), 0.5, 1)
    assert fixed.test == splits.test
    pair = {str(train / "ant" / "ant_00.png"), str(train / "ant" / "copy.png")}
    assert pair <= {p for p, _ in fixed.train} or pair <= {p for p, _ in fixed.val}


def old_stratified_split(samples, fraction, seed):
    """stratified_split as it was before groups, to hold the new one to the same output."""
    rng = random.Random(seed)
    by_class = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    keep, held = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        n = 0 if len(items) < 2 or fraction <= 0 else max(1, round(fraction * len(items)))
        held += items[:n]
        keep += items[n:]
    return sorted(keep), sorted(held)


@pytest.mark.parametrize("seed", range(8))
def test_singleton_groups_split_exactly_as_before(seed):
    rng = random.Random(100 + seed)
    samples = [(f"img_{rng.randrange(10**6):06d}_{i}.png", rng.choice([0, 0, 1, 2, 2, 2, 3])) for i in range(60)]
    samples.append(("only_one_of_its_class.png", 7))
    for fraction in (0.0, 0.1, 0.2, 0.25, 0.5, 0.9):
        expected = old_stratified_split(samples, fraction, seed)
        assert stratified_split(samples, fraction, seed) == expected
        assert stratified_split(samples, fraction, seed, groups={}) == expected
        assert stratified_split(samples, fraction, seed, groups={p: i for i, (p, _) in enumerate(samples)}) == expected


def test_grouped_split_keeps_groups_whole_and_classes_in_training():
    samples = [(f"a{i:02d}", 0) for i in range(20)] + [(f"b{i:02d}", 1) for i in range(10)] + [("c0", 2), ("c1", 2)]
    groups = {"a00": 0, "a01": 0, "a02": 0, "a03": 0, "b00": 1, "b01": 1, "b02": 1, "b03": 1, "b04": 1,
              "c0": 2, "c1": 2}
    for seed in range(20):
        keep, held = stratified_split(samples, 0.2, seed, groups)
        held_paths = {p for p, _ in held}
        for g in range(3):
            members = {p for p, k in groups.items() if k == g}
            assert members <= held_paths or not members & held_paths
        assert sum(label == 0 for _, label in held) == 4  # the target, met by singletons or by the group of 4
        assert sum(label == 1 for _, label in held) == 2  # the group of 5 does not fit a target of 2; singletons do
        assert ("c0", 2) in keep and ("c1", 2) in keep  # a class that is one group stays in training
    # when no group fits the target, the smallest one is held out rather than none
    keep, held = stratified_split([("x0", 0), ("x1", 0), ("x2", 0), ("x3", 0)], 0.25, 0, {"x0": 0, "x1": 0,
                                                                                           "x2": 1, "x3": 1})
    assert {p for p, _ in held} in ({"x0", "x1"}, {"x2", "x3"})


def test_drop_leaked_removes_val_and_test_copies_of_training_images(tmp_path):
    train = write_pictures(tmp_path / "d" / "train", per_class=6)
    val = write_pictures(tmp_path / "d" / "val", per_class=3, first_seed=30)
    test = write_pictures(tmp_path / "d" / "test", per_class=3, first_seed=60)
    planted = {
        "val": {exact_copy(train / "ant" / "ant_00.png", val / "ant" / "copy.png"),
                reencoded(train / "bee" / "bee_01.png", val / "bee" / "reencoded.jpg")},
        "test": {brightened(train / "cat" / "cat_02.png", test / "cat" / "brightened.png"),
                 exact_copy(train / "ant" / "ant_03.png", test / "ant" / "copy.png")},
    }
    exact_copy(val / "bee" / "bee_00.png", test / "bee" / "from_val.png")  # val and test only: stays
    exact_copy(train / "cat" / "cat_04.png", train / "cat" / "copy.png")  # within train: stays
    splits = discover(tmp_path / "d")
    assert not splits.val_made
    facts = facts_of(splits)
    kept, removed = drop_leaked(splits, facts)
    assert {k: set(removed[k]) for k in ("val", "test")} == {k: set(map(str, v)) for k, v in planted.items()}
    assert removed["copy_of"][str(test / "cat" / "brightened.png")] == str(train / "cat" / "cat_02.png")
    assert removed["label_conflicts"] == []
    assert kept.train == splits.train
    for name in ("val", "test"):
        assert [s for s in getattr(splits, name) if s[0] not in removed[name]] == getattr(kept, name)
    assert str(test / "bee" / "from_val.png") in {p for p, _ in kept.test}
    with pytest.raises(ValueError, match="drop_leaked"):
        leak_proof_split(splits, facts, 0.2, 0)  # the validation split was given: not ours to redo


def test_duplicates_of_finds_exact_and_near_copies_only(tmp_path):
    ref_dir = write_pictures(tmp_path / "train", per_class=5)
    make_class_folder(tmp_path / "small", per_class=2, classes=("red",))  # 32 px: too small for perceptual hashes
    ref_paths = [str(p) for p in sorted(ref_dir.rglob("*.png"))] + [str(tmp_path / "small" / "red" / "red_00.png")]
    reference = json.loads(json.dumps(fingerprints(inspect_files(ref_paths, workers=2), ref_paths)))
    assert set(reference) == set(ref_paths)
    facts_ref = inspect_files(ref_paths, workers=2)
    assert all(int(r["phash"], 16) == facts_ref[p].phash and len(r["phash"]) == 16 for p, r in reference.items())

    new = tmp_path / "new"
    new.mkdir()
    copies = {exact_copy(ref_dir / "ant" / "ant_00.png", new / "exact.png"),
              reencoded(ref_dir / "bee" / "bee_01.png", new / "reencoded.jpg"),
              brightened(ref_dir / "cat" / "cat_02.png", new / "brightened.png"),
              exact_copy(tmp_path / "small" / "red" / "red_00.png", new / "small_exact.png")}
    unrelated = {new / f"other_{i}.png" for i in range(12)}
    for i, p in enumerate(sorted(unrelated)):
        picture(500 + i).save(p)
    shutil.copy(tmp_path / "small" / "red" / "red_01.png", new / "small_other.png")  # 32 px, not in the reference
    unrelated.add(new / "small_other.png")
    (new / "broken.png").write_bytes(b"")
    facts = inspect_files([str(p) for p in sorted(new.iterdir())], workers=2)
    assert duplicates_of(reference, facts) == set(map(str, copies))
    assert duplicates_of(reference, facts, "exact") == {str(new / "exact.png"), str(new / "small_exact.png")}
    assert not duplicates_of(reference, facts, "off")
    assert not duplicates_of({}, facts)


def test_split_json_holds_absolute_paths_and_old_relative_files_load(tmp_path, monkeypatch):
    make_class_folder(tmp_path / "real", per_class=3)
    os.symlink(tmp_path / "real", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    splits = discover("link", val_fraction=0.34, seed=0)
    record = json.loads(json.dumps(splits.to_json()))
    assert record["val_made"] is True
    paths = [p for s in ("train", "val", "test") for p, _ in record[s]]
    assert paths and all(p.startswith(str(tmp_path / "link") + os.sep) for p in paths)  # absolute, symlink kept
    monkeypatch.chdir(tmp_path / "real")
    loaded = DataSplits.from_json(record)
    assert loaded.val_made and loaded.layout == splits.layout and loaded.counts("val") == splits.counts("val")
    assert all(Path(p).is_file() for s in ("train", "val") for p, _ in getattr(loaded, s))

    old = {"classes": ["blue", "red"], "layout": "class folders", "train": [["data/red/a.png", "red"]],
           "val": [["data/blue/b.png", "blue"]], "test": []}
    loaded = DataSplits.from_json(old)
    assert loaded.train == [("data/red/a.png", 1)] and loaded.val == [("data/blue/b.png", 0)]
    assert loaded.val_made is False


def test_val_made_says_who_made_the_validation_split(tmp_path):
    make_class_folder(tmp_path / "folders" / "train", per_class=3)
    assert discover(tmp_path / "folders").val_made
    make_class_folder(tmp_path / "folders" / "val", per_class=1)
    given = discover(tmp_path / "folders")
    assert not given.val_made
    rows = ["path,label,split"] + [f"{p},{given.classes[y]},train" for p, y in given.train]
    (tmp_path / "train_only.csv").write_text("\n".join(rows) + "\n")
    assert discover(tmp_path / "train_only.csv").val_made
    rows += [f"{p},{given.classes[y]},val" for p, y in given.val]
    (tmp_path / "with_val.csv").write_text("\n".join(rows) + "\n")
    assert not discover(tmp_path / "with_val.csv").val_made


def look_alike(phase: float, size: int = 96) -> Image.Image:
    """The same coarse picture with a fine pattern (10 cycles per side) in one of two phases: identical perceptual
    hashes (they see only the lowest frequencies), yet two different pictures."""
    rng = np.random.default_rng(0)
    coarse = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC), float)
    x = np.arange(size)
    pattern = np.cos(2 * np.pi * 10 * x / size + phase)[None, :] * np.cos(2 * np.pi * 10 * x / size)[:, None]
    return Image.fromarray((coarse + 30 * pattern[..., None]).clip(0, 255).astype(np.uint8))


def test_pictures_that_only_share_a_hash_are_not_copies(tmp_path):
    look_alike(0).save(tmp_path / "a.png")
    look_alike(np.pi).save(tmp_path / "b.png")
    reencoded(tmp_path / "a.png", tmp_path / "a_copy.jpg", quality=80)
    facts = inspect_files([str(tmp_path / n) for n in ("a.png", "b.png", "a_copy.jpg")], workers=1)
    a, b, copy = (facts[str(tmp_path / n)] for n in ("a.png", "b.png", "a_copy.jpg"))
    assert bin(a.phash ^ b.phash).count("1") <= 2  # the hash alone would join them (it did before thumbnails)
    assert as_sets(duplicate_groups(facts)) == {frozenset({str(tmp_path / "a.png"), str(tmp_path / "a_copy.jpg")})}
    thumbs = [np.frombuffer(f.thumb, np.uint8)[None] for f in (a, b, copy)]
    assert similarity(thumbs[0], thumbs[1])[0] < 0.95 < 0.99 < similarity(thumbs[0], thumbs[2])[0]


def chain_facts() -> list[FileFacts]:
    """Three images with one perceptual hash: a ~ b and b ~ c are copies (similarity >= 0.99), a and c are not."""
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 1024)
    step = rng.normal(0, 1, 1024)
    step -= step @ a / (a @ a) * a  # orthogonal to a: similarity falls as the step grows
    thumbs = [a + k * 0.1 * step for k in range(3)]
    out = []
    for name, t in zip("abc", thumbs):
        grey = (128 + 30 * t / t.std()).clip(0, 255).astype(np.uint8)
        out.append(FileFacts(name, sha=name, phash=7, phash_ok=True, thumb=grey.tobytes()))
    return out


def test_nothing_is_dropped_through_a_chain():
    a, b, c = chain_facts()
    sims = [similarity(np.frombuffer(x.thumb, np.uint8)[None], np.frombuffer(y.thumb, np.uint8)[None])[0]
            for x, y in ((a, b), (b, c), (a, c))]
    assert sims[0] >= 0.99 and sims[1] >= 0.99 and sims[2] < 0.99, sims
    groups, pairs = group_duplicates([a, b, c])
    assert groups == [[0, 1, 2]]  # a split keeps the chain whole...
    assert {(i, j) for i, j, _ in pairs} == {(0, 1), (1, 2)}
    splits = DataSplits(["x", "y"], train=[("a", 0)], val=[("b", 0)], test=[("c", 1)])
    kept, record = drop_leaked(splits, {"a": a, "b": b, "c": c})
    assert record["val"] == ["b"] and record["test"] == []  # ...but c is not a copy of the training image a
    assert kept.test == [("c", 1)]


def test_label_conflicts_and_classes_hit_hard_are_recorded():
    a, b, c = chain_facts()
    splits = DataSplits(["x", "y"], train=[("a", 0)], val=[("b", 1)], test=[])
    _, record = drop_leaked(splits, {"a": a, "b": b, "c": c})
    assert record["label_conflicts"] == [{"path": "b", "label": "y", "copy_of": "a", "copy_label": "x"}]
    assert record["removed_share"] == {"val": {"y": 1.0}} and loud_classes(record) == ["val/y 100%"]
    assert copies_of({}, {"b": b}) == {}


def test_a_refit_drops_test_copies_of_validation_images_from_the_figure(tmp_path):
    """The refit fits the shipped head on train + val: a test image that copies a val image would be scored on an
    image the model was fitted on (test accuracy 1.00 with the refit, 0.71 without, before this was fixed)."""
    data = tmp_path / "data"
    make_class_folder(data / "train", per_class=6, size=32)
    make_class_folder(data / "val", per_class=3, size=32, seed=1)
    make_class_folder(data / "test", per_class=3, size=32, seed=2)
    picture(900).save(data / "val" / "blue" / "picture.png")  # a re-encoded photo, not a JPEG'd patch of pure noise
    copies = {exact_copy(data / "val" / "red" / "red_00.png", data / "test" / "red" / "copy_of_val.png"),
              reencoded(data / "val" / "blue" / "picture.png", data / "test" / "blue" / "copy_of_val.jpg", 90)}
    refit = train(TrainConfig(data=str(data), out=str(tmp_path / "refit"), strategy="linear-probe", image_size=32,
                              report=False))
    assert refit["refit"]["refit_images"] == 28 and refit["leakage"]["excluded_test_after_refit"] == 2
    metrics = json.loads((tmp_path / "refit" / "test_metrics.json").read_text())
    assert metrics["num_images"] == 9  # 11 test images, the 2 copies of val images left out
    record = json.loads((tmp_path / "refit" / "leakage.json").read_text())
    assert set(record["excluded_after_refit"]["test"]) == set(map(str, copies))
    assert record["fitted_on"] == ["train", "val"]  # said there: the fingerprints file is written once
    prints = json.loads((tmp_path / "refit" / "train_fingerprints.json").read_text())
    assert {r["split"] for r in prints["images"].values()} == {"train", "val"}
    assert set(RunDir(tmp_path / "refit").fitted_fingerprints()) == set(prints["images"])
    m = evaluate_run(load_run(tmp_path / "refit"), data / "test")
    assert set(m["leaked"]) == set(map(str, copies)) and m["num_images"] == 9

    plain = train(TrainConfig(data=str(data), out=str(tmp_path / "plain"), strategy="linear-probe", image_size=32,
                              refit=False, report=False))
    assert plain["leakage"]["excluded_test_after_refit"] == 0
    assert json.loads((tmp_path / "plain" / "test_metrics.json").read_text())["num_images"] == 11
    assert evaluate_run(load_run(tmp_path / "plain"), data / "test")["leaked"] == []  # val only chose


@pytest.mark.parametrize("ref_hash, query_hash", [(0b111, 0b011), (0b011, 0b111)])
def test_a_copy_is_found_whichever_hash_sorts_first(ref_hash, query_hash):
    thumb = np.random.default_rng(0).integers(0, 256, 1024).astype(np.uint8).tobytes()
    ref = FileFacts("r", sha="r", phash=ref_hash, phash_ok=True, thumb=thumb)
    query = FileFacts("q", sha="q", phash=query_hash, phash_ok=True, thumb=thumb)
    assert copies_of(fingerprints({"r": ref}, ["r"]), {"q": query}) == {"q": {"copy_of": "r", "similarity": 1.0}}


def test_check_reports_copies_between_val_and_test(tmp_path):
    write_pictures(tmp_path / "d" / "train", per_class=4)
    write_pictures(tmp_path / "d" / "val", per_class=2, first_seed=30)
    write_pictures(tmp_path / "d" / "test", per_class=2, first_seed=60)
    reencoded(tmp_path / "d" / "val" / "bee" / "bee_00.png", tmp_path / "d" / "test" / "bee" / "from_val.jpg", 85)
    leaks = [i for i in check(tmp_path / "d").issues if i.kind == "leak"]
    assert [sorted(f["split"] for f in i.files) for i in leaks] == [["test", "val"]]
    assert "in val and test" in leaks[0].message


def test_images_too_small_for_near_copies_match_exactly_only():
    a, b = (FileFacts(n, sha="same", phash=1, phash_ok=False) for n in "ab")
    c = FileFacts("c", sha="other", phash=1, phash_ok=False)
    assert duplicate_groups({"a": a, "b": b, "c": c}) == [["a", "b"]]
