"""WebDataset tar shards and Hugging Face datasets: the same samples, checks and feature-cache rows as a folder."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from headstart.cli import main
from headstart.core import archives
from headstart.core.hashing import file_hash
from headstart.data.check import check
from headstart.data.images import load_image
from headstart.data.sources import discover, expand_paths, read_class_folders
from tests.conftest import add_broken_files, make_class_folder

wds = pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")


def write_shards(folder: Path, out: Path, per_shard: int, by_index: bool = False) -> list[Path]:
    """The class folder's images as WebDataset shards (``<key>.png`` + ``<key>.cls``), written by webdataset."""
    classes, samples = read_class_folders(folder)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, start in enumerate(range(0, len(samples), per_shard)):
        shards.append(out / f"shard-{s:06d}.tar")
        with wds.TarWriter(str(shards[-1])) as sink:
            for i, (path, y) in enumerate(samples[start:start + per_shard], start):
                ext = Path(path).suffix.lstrip(".")
                sink.write({"__key__": f"{i:06d}", ext: Path(path).read_bytes(),
                            "cls": str(y) if by_index else classes[y]})
    return shards


def write_dataset(folder: Path, out: Path) -> Path:
    """The class folder as a Hugging Face dataset (image bytes + ClassLabel), written with save_to_disk."""
    classes, samples = read_class_folders(folder)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": Path(p).read_bytes(), "path": None} for p, _ in samples],
                                     "label": [y for _, y in samples]}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(out))
    return out


@pytest.fixture
def folder(tmp_path):
    return make_class_folder(tmp_path / "data", per_class=6, size=24)


def _by_hash(splits):
    """class name of each image, by content hash: what discovery found, whatever the paths."""
    return sorted((file_hash(p), splits.classes[y]) for s in ("train", "val", "test") for p, y in getattr(splits, s))


@pytest.mark.parametrize("by_index", [False, True])
def test_shards_give_the_images_and_labels_of_the_folder(folder, tmp_path, by_index):
    write_shards(folder, tmp_path / "shards", per_shard=5, by_index=by_index)
    pattern = str(tmp_path / "shards" / "shard-{000000..000003}.tar")
    splits = discover(pattern)
    reference = discover(folder)
    assert len(splits.train) + len(splits.val) == 18
    if by_index:
        assert splits.classes == ["0", "1", "2"]
    else:
        assert splits.classes == reference.classes and _by_hash(splits) == _by_hash(reference)
    path = splits.train[0][0]
    assert archives.is_member(path) and load_image(path).size == (24, 24)
    single = discover(str(tmp_path / "shards" / "shard-000000.tar"), check=False)
    assert len(single.train) + len(single.val) == 5


def test_hugging_face_dataset_gives_the_images_and_labels_of_the_folder(folder, tmp_path):
    path = write_dataset(folder, tmp_path / "hf")
    splits = discover(path)
    assert splits.classes == ["blue", "green", "red"] and _by_hash(splits) == _by_hash(discover(folder))
    assert len(expand_paths([path])) == 18


def test_check_finds_broken_members_and_duplicates_in_shards(folder, tmp_path):
    add_broken_files(folder / "red")
    (folder / "green" / "copy.png").write_bytes((folder / "green" / "green_00.png").read_bytes())
    write_shards(folder, tmp_path / "shards", per_shard=100)
    report = check(str(tmp_path / "shards" / "shard-000000.tar"))
    kinds = json.loads(json.dumps(report.to_json()))["by_kind"]
    assert kinds.get("corrupt") == 1 and kinds.get("empty") == 1 and kinds.get("not-image") == 1
    assert kinds.get("duplicate", 0) + kinds.get("leak", 0) >= 1


def test_a_member_has_the_content_hash_of_its_file(folder, tmp_path):
    shard = write_shards(folder, tmp_path / "shards", per_shard=100)[0]
    members = expand_paths([shard])
    files = [p for p, _ in read_class_folders(folder)[1]]
    assert sorted(map(file_hash, members)) == sorted(map(file_hash, files))


def test_shard_errors_are_sentences(tmp_path, capsys):
    gz = tmp_path / "x.tar"
    gz.write_bytes(b"\x1f\x8b" + b"0" * 600)
    assert main(["check", str(gz)]) == 2
    assert "uncompressed tar" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "shard-{000000..000002}.tar")]) == 2
    assert "do not exist" in capsys.readouterr().err
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    with wds.TarWriter(str(tmp_path / "nolabel.tar")) as sink:
        sink.write({"__key__": "a", "png": buf.getvalue()})
    assert main(["check", str(tmp_path / "nolabel.tar")]) == 2
    assert ".cls" in capsys.readouterr().err


def test_members_share_cache_rows_with_their_files(folder, tmp_path):
    import torch

    from headstart.core.runtime import make_runtime
    from headstart.features import extract_features
    from headstart.zoo.model import build_model

    torch.manual_seed(0)
    runtime = make_runtime("cpu", "fp32")
    model = runtime.prepare(build_model("resnet20", 3, pretrained=False))
    files = [p for p, _ in read_class_folders(folder)[1]]
    members = expand_paths([write_dataset(folder, tmp_path / "hf")])
    kw = dict(preprocessing=model.spec.preprocessing(), runtime=runtime, workers=0, cache_dir=tmp_path / "cache")
    first = extract_features(model, files, **kw)
    again = extract_features(model, members, **kw)
    assert first.computed == 18 and again.computed == 0 and sorted(again.keys) == sorted(first.keys)


@pytest.mark.slow
def test_train_evaluate_predict_on_shards_and_datasets(folder, tmp_path, capsys, monkeypatch):
    write_shards(folder, tmp_path / "shards", per_shard=7)
    test = write_dataset(make_class_folder(tmp_path / "test", per_class=3, size=24, seed=5), tmp_path / "hf")
    fast = ["--image-size", "64", "--batch-size", "8", "--workers", "0"]
    pattern = str(tmp_path / "shards" / "shard-{000000..000002}.tar")
    assert main(["train", pattern, "--out", str(tmp_path / "run"), "--strategy", "linear-probe", *fast]) == 0
    assert main(["evaluate", str(tmp_path / "run"), str(test), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.8
    monkeypatch.setattr("headstart.cli.predict.STREAM_CHUNK", 5)  # predict streams its records, 5 images a call
    assert main(["predict", str(tmp_path / "run"), pattern, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 18 and all("::" in r["path"] and r.get("error") is None for r in out)
