"""headstart check: every kind of bad input is found, named in the right category, and handled by train."""

import io
import itertools
import json
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageEnhance

import headstart.data.check as check_module
from headstart.cli import main
from headstart.data.check import check, inspect_file
from headstart.data.images import decode_image
from headstart.data.leakage import near_pairs
from tests.conftest import add_broken_files, make_class_folder

BOMB_LIMIT = ["--max-pixels", "10000"]  # the fixture's images are at most 40x40; its "bomb" is 200x200

# What the fixture plants, relative to the data folder, by kind.
EXPECTED = {
    "corrupt": {"train/red/truncated.jpg"},
    "empty": {"train/red/empty.jpg"},
    "not-image": {"train/red/notes.jpg"},
    "too-large": {"train/red/bomb.png"},
    "wrong-extension": {"train/green/png_named.jpg"},
    "unusual-mode": {"train/blue/cmyk.jpg", "train/green/deep16.png", "train/red/rgba.png"},
    "exif-rotated": {"train/blue/rotated.jpg"},
}
BAD = {p for k in ("corrupt", "empty", "not-image", "too-large") for p in EXPECTED[k]}
LEAKS = [{"train/red/red_00.png", "val/red/copy_of_red_00.png"},  # exact copy
         {"train/blue/blue_02.png", "val/blue/reencoded.jpg"}]  # near: the same picture as a JPEG
DUPLICATE = {"train/green/green_00.png", "train/green/brightened.png"}  # near, within train


def noise(seed: int, size: int = 64, channels: int = 3) -> np.ndarray:
    """A picture no other test image resembles (flat images would all share one perceptual hash)."""
    return np.random.default_rng(100 + seed).integers(0, 256, (size, size, channels), dtype=np.uint8)


def build_dataset(root: Path) -> Path:
    train, val = root / "train", root / "val"
    make_class_folder(train, per_class=8, size=64)
    make_class_folder(val, per_class=3, seed=1, size=64)
    make_class_folder(train, per_class=1, classes=("purple",), seed=2, size=64)  # a class with one image
    for path in add_broken_files(train / "red"):  # truncated.jpg, empty.jpg, notes.jpg
        assert path.exists()
    Image.fromarray(noise(1, 200)).save(train / "red" / "bomb.png")
    Image.fromarray(noise(2)).save(train / "green" / "png_named.jpg", format="PNG")
    Image.fromarray(noise(3)).convert("CMYK").save(train / "blue" / "cmyk.jpg", quality=95)
    Image.fromarray(noise(4, channels=1)[..., 0].astype(np.uint16) * 257).save(train / "green" / "deep16.png")
    Image.fromarray(noise(5, channels=4), "RGBA").save(train / "red" / "rgba.png")
    rotated = Image.fromarray(noise(6, 16)[:, :8].copy())
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(train / "blue" / "rotated.jpg", exif=exif, quality=95)
    # A photo-like picture (smooth, mildly noisy): brightening a patch of pure noise clips it past recognition.
    smooth = np.asarray(Image.fromarray(noise(7, 8)).resize((64, 64), Image.Resampling.BICUBIC), float)
    Image.fromarray((smooth * [0.3, 1.0, 0.3]).astype(np.uint8)).save(train / "green" / "green_00.png")
    shutil.copy(train / "red" / "red_00.png", val / "red" / "copy_of_red_00.png")
    Image.open(train / "blue" / "blue_02.png").save(val / "blue" / "reencoded.jpg", quality=90)
    ImageEnhance.Brightness(Image.open(train / "green" / "green_00.png")).enhance(1.1).save(
        train / "green" / "brightened.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("check") / "data")


def by_kind(report) -> dict[str, list[set[str]]]:
    root = report.root
    out: dict[str, list[set[str]]] = {}
    for issue in report.issues:
        out.setdefault(issue.kind, []).append(
            {str(Path(f["path"]).relative_to(root)) if "path" in f else f"class {f['class']} ({f['split']})"
             for f in issue.files})
    return out


def test_every_planted_problem_is_found_in_its_category(dataset):
    report = check(dataset, max_pixels=10_000)
    found = by_kind(report)
    for kind, paths in EXPECTED.items():
        assert set().union(*found.get(kind, [set()])) == paths, kind
        assert all(len(group) == 1 for group in found[kind]), kind
    assert sorted(found["leak"], key=sorted) == sorted(LEAKS, key=sorted)
    assert found["duplicate"] == [DUPLICATE]
    assert {"class purple (train)", "class purple (val)"} == set().union(*found["few-images"])
    assert len(found["imbalance"]) == 1  # green 11, purple 1: above the default 10:1
    assert report.verdict == "problems"
    assert {str(Path(p).relative_to(dataset)) for p, _ in report.bad_files()} == BAD
    assert report.counts["train"] == {"blue": 10, "green": 11, "purple": 1, "red": 9}


def test_severity_follows_whether_headstart_can_use_the_file(dataset):
    severity = {i.kind: i.severity for i in check(dataset, max_pixels=10_000).issues}
    assert {k for k, s in severity.items() if s == "error"} == {"corrupt", "empty", "not-image", "too-large"}
    assert {k for k, s in severity.items() if s == "info"} == {"exif-rotated"}
    assert severity["leak"] == severity["unusual-mode"] == severity["wrong-extension"] == "warning"


def test_messages_say_what_is_wrong(dataset):
    messages = {i.kind: i.message for i in check(dataset, max_pixels=10_000).issues}
    assert "PNG content named .jpg" in messages["wrong-extension"]
    assert "pixel limit" in messages["too-large"] and "0 bytes" in messages["empty"]
    assert "EXIF orientation 6" in messages["exif-rotated"]
    leaks = [i.message for i in check(dataset).issues if i.kind == "leak"]
    assert any("identical files in train and val" in m for m in leaks)
    assert any("near-identical" in m for m in leaks)


def test_cli_exit_codes_and_verdicts(dataset, tmp_path, capsys):
    assert main(["check", str(dataset), *BOMB_LIMIT]) == 1
    out = capsys.readouterr().out
    assert "verdict: problems" in out and "4 file(s) cannot be used" in out

    clean = make_class_folder(tmp_path / "clean", per_class=6)
    assert main(["check", str(clean)]) == 0
    assert "verdict: ok" in capsys.readouterr().out

    shutil.copy(clean / "red" / "red_00.png", clean / "red" / "again.png")
    assert main(["check", str(clean)]) == 0  # warnings do not fail
    assert "verdict: warnings" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["check", "/no/such/folder"], "does not exist"),
    (["check", "{data}", "--near", "99"], "--near 99"),
    (["check", "{data}", "--quarantine", "{data}/bad"], "inside"),
])
def test_wrong_use_exits_2(tmp_path, capsys, argv, message):
    data = make_class_folder(tmp_path / "d", per_class=2)
    add_broken_files(data / "red")
    assert main([a.format(data=data) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (data / "red" / "empty.jpg").exists()  # nothing moved on a refused --quarantine


def test_json_report_parses(dataset, capsys):
    assert main(["check", str(dataset), "--json", *BOMB_LIMIT]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "problems" and report["summary"]["error"] == 4
    assert report["by_kind"]["leak"] == 2 and report["files"] == 46
    errors = [i for i in report["issues"] if i["severity"] == "error"]
    assert {Path(i["files"][0]["path"]).name for i in errors} == {Path(p).name for p in BAD}
    assert all(set(i) == {"severity", "kind", "message", "files"} for i in report["issues"])


def test_quarantine_moves_exactly_the_bad_files_and_never_overwrites(dataset, tmp_path, capsys):
    data = shutil.copytree(dataset, tmp_path / "data")
    dest = tmp_path / "quarantine"
    (dest / "train" / "red").mkdir(parents=True)
    (dest / "train" / "red" / "empty.jpg").write_text("an earlier quarantine")
    before = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}

    assert main(["check", str(data), "--quarantine", str(dest), "--json", *BOMB_LIMIT]) == 1
    moved = json.loads(capsys.readouterr().out)["quarantined"]
    after = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    assert before - after == BAD
    landed = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert landed == (BAD - {"train/red/empty.jpg"}) | {"train/red/empty.jpg", "train/red/empty.1.jpg",
                                                        "quarantine.json"}
    assert (dest / "train" / "red" / "empty.jpg").read_text() == "an earlier quarantine"
    assert json.loads((dest / "quarantine.json").read_text()) == moved and len(moved) == 4
    assert main(["check", str(data), *BOMB_LIMIT]) == 0  # what is left is usable (with warnings)


def test_train_skips_bad_files_names_them_and_mentions_leakage(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(run), "--model", "resnet20", "--strategy", "scratch",
                 "--epochs", "1", "--workers", "0", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    skipped = json.loads((run / "skipped.json").read_text())
    assert all(set(s) == {"path", "reason"} for s in skipped)
    names = {Path(s["path"]).name for s in skipped}
    assert names == {"truncated.jpg", "empty.jpg", "notes.jpg"}  # the "bomb" is fine at the real pixel limit
    for name in names:
        assert f"{name}: " in err
    assert "left out 3" in err and "skipped.json" in err
    warning_lines = [line for line in err.splitlines() if line.startswith("data warnings:")]
    assert len(warning_lines) == 1 and "leakage" in warning_lines[0] and "headstart check" in warning_lines[0]


def test_train_refuses_when_bad_files_empty_a_class(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=4, classes=("red", "green"))
    (data / "blue").mkdir()
    add_broken_files(data / "blue")
    report = check(data)
    assert report.verdict == "problems" and any(i.kind == "unusable" and "blue" in i.message for i in report.issues)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--model", "resnet20", "--strategy",
                 "scratch", "--epochs", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "blue" in err and "no usable training images" in err


def test_imbalance_and_small_classes_follow_their_thresholds(tmp_path):
    data = make_class_folder(tmp_path / "d", per_class=12, classes=("red", "green"))
    make_class_folder(data, per_class=3, classes=("blue",), seed=5)
    kinds = lambda **kw: {i.kind for i in check(data, val_fraction=0.0, **kw).issues}  # noqa: E731
    assert kinds() == {"few-images"}
    assert kinds(max_imbalance=3) == {"few-images", "imbalance"}
    assert kinds(min_images=3) == set()
    report = check(data, val_fraction=0.0, max_imbalance=3)
    assert next(i.message for i in report.issues if i.kind == "imbalance").startswith("class imbalance 4:1")


def test_near_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = [np.uint64(1) << np.uint64(b) for b in rng.integers(0, 64, 60)]
    # Copies of a few hashes with 1 to 6 bits flipped, among unrelated ones.
    hashes = list(base) + [base[i % 5] ^ np.bitwise_xor.reduce(flips[i: i + 1 + i % 6]) for i in range(20)]
    hashes = np.unique(np.array(hashes, dtype=np.uint64))  # check passes distinct hashes
    brute = [(i, j, (int(hashes[i]) ^ int(hashes[j])).bit_count())
             for i, j in itertools.combinations(range(len(hashes)), 2)]
    for max_distance in (0, 3, 6):
        assert near_pairs(hashes, max_distance) == [(i, j, d) for i, j, d in brute if d <= max_distance]


def test_decoding_happens_once_per_file_and_a_second_check_decodes_only_what_failed(dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    calls = []
    real = check_module.decode_image
    monkeypatch.setattr(check_module, "decode_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    report = check(dataset)
    assert len(calls) == len(set(calls)) == report.files
    bad = {i.files[0]["path"] for i in report.issues if i.severity == "error"}
    assert bad
    calls.clear()
    again = check(dataset)  # the facts of every usable file come from the store, by content hash
    assert set(calls) == bad
    assert again.to_json() | {"seconds": 0} == report.to_json() | {"seconds": 0}
    assert [(f.phash, f.thumb, f.mode, f.format, f.orientation) for f in again.facts.values()] == \
        [(f.phash, f.thumb, f.mode, f.format, f.orientation) for f in report.facts.values()]


def test_a_check_stopped_midway_keeps_the_facts_of_every_full_shard(dataset, monkeypatch, tmp_path):
    from headstart.data import facts_cache

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(facts_cache, "SHARD_ROWS", 10)
    real, seen = check_module.decode_image, []

    def stop_after_25(*a, **k):
        seen.append(a[0])
        if len(seen) > 25:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(check_module, "decode_image", stop_after_25)
    with pytest.raises(KeyboardInterrupt):
        check(dataset, workers=1)
    store = facts_cache.FactsStore(facts_cache.settings(check_module.MAX_PIXELS, check_module.CHECK_DRAFT, 32))
    assert len(store) >= 10  # every shard of 10 written before the stop
    monkeypatch.setattr(check_module, "decode_image", lambda *a, **k: seen.append(a[0]) or real(*a, **k))
    seen.clear()
    report = check(dataset)
    assert len(seen) <= report.files - len(store)


def test_same_picture_in_other_bytes_is_near_not_identical(tmp_path):
    # Guards the exact/near distinction: same picture, different bytes is "near", never "identical files".
    make_class_folder(tmp_path / "d", per_class=6, classes=("red", "green"), size=64)
    buf = io.BytesIO()
    Image.open(tmp_path / "d" / "red" / "red_00.png").save(buf, format="PNG", compress_level=1)
    (tmp_path / "d" / "red" / "resaved.png").write_bytes(buf.getvalue())
    [dup] = [i for i in check(tmp_path / "d", val_fraction=0.0).issues if i.kind == "duplicate"]
    assert "similarity 1.0000" in dup.message and "identical files" not in dup.message


def test_an_empty_class_folder_is_listed_among_the_other_findings(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=3)
    (data / "purple").mkdir()
    add_broken_files(data / "red")
    code = main(["check", str(data)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code != 0 and "purple" in text and "Traceback" not in text
    assert "truncated" in text or "corrupt" in text or "empty" in text  # the other findings are still there


def test_big_jpegs_are_checked_at_reduced_scale_and_truncation_is_still_found(tmp_path):
    """The check decodes JPEGs with PIL's draft mode (1/2..1/8 scale): a file cut short is still found, and the
    perceptual hash stays within a few bits of the full decode's."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    big = tmp_path / "big.jpg"
    Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC).save(big, quality=92)
    assert decode_image(big, draft=256).image.size == (400, 300)  # 1/4 scale: the sides stay >= 256
    facts = inspect_file(str(big))
    full = decode_image(big).image.resize((64, 64), Image.Resampling.BOX, reducing_gap=2.0)
    full_bits = int.from_bytes(np.packbits(imagehash.phash(full).hash.ravel()).tobytes(), "big")
    assert facts.error is None and facts.phash_ok
    assert bin(facts.phash ^ full_bits).count("1") <= 4
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(big.read_bytes()[: int(big.stat().st_size * 0.95)])
    assert "truncated" in inspect_file(str(cut)).error.reason
