"""Feature extraction, the on-disk feature cache, heads fitted on features, and ``headstart embed``."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.cli import main
from headstart.core.hashing import tensors_digest
from headstart.core.preprocessing import Preprocessing
from headstart.core.runtime import make_runtime
from headstart.data.dataset import ImageFiles, make_loader
from headstart.data.sources import read_class_folders
from headstart.data.transforms import eval_transform
from headstart.features import FeatureCache, extract_features
from headstart.training.heads import fit_head
from headstart.training.probe import features_from_loader
from headstart.zoo.model import build_model
from tests.conftest import add_broken_files, make_class_folder


@pytest.fixture(scope="module")
def small_model():
    """resnet20 with random weights: a real backbone, fast at 32 px."""
    torch.manual_seed(0)
    runtime = make_runtime("cpu", "fp32")
    model = build_model("resnet20", 3, pretrained=False)
    runtime.prepare(model)
    return model, model.spec.preprocessing(), runtime


def _paths(folder):
    return [p for p, _ in read_class_folders(folder)[1]]


def test_features_match_the_eval_transform_path(small_model, tmp_path):
    model, pre, runtime = small_model
    data = make_class_folder(tmp_path / "d", per_class=4, size=40)
    _, samples = read_class_folders(data)
    feats = extract_features(model, [p for p, _ in samples], pre, runtime, batch_size=5, workers=0,
                             cache_dir=tmp_path / "cache")
    loader = make_loader(ImageFiles(samples, eval_transform(pre)), 5, False, workers=0)
    from_loader, _ = features_from_loader(model, loader, runtime)
    with torch.no_grad():  # the plain, unfolded backbone
        ref = torch.cat([model.eval().forward_features(runtime.to_input(x)) for x, _ in loader])
    torch.testing.assert_close(torch.from_numpy(feats.array()), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(from_loader), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, interpolation",
                         [((28, 28), "bicubic"), ((500, 375), "bicubic"), ((31, 90), "bilinear")])
def test_resize_crop_gives_the_numbers_of_the_torchvision_transforms(size, interpolation):
    from torchvision.transforms import v2 as T

    from headstart.data.transforms import eval_resize_crop

    pre = {"image_size": 64, "crop_pct": 0.875, "interpolation": interpolation, "mean": [0.5] * 3, "std": [0.5] * 3}
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    reference = T.Compose([T.ToImage(), T.Resize(73, interpolation=T.InterpolationMode(interpolation), antialias=True),
                           T.CenterCrop(64)])
    torch.testing.assert_close(eval_resize_crop(pre)(im), reference(im).as_subclass(torch.Tensor), rtol=0, atol=0)


def test_batch_normalisation_is_bit_identical_to_eval_transform():
    from headstart.data.transforms import to_float_normalized
    from headstart.features.extract import _Collate

    pre = Preprocessing(64, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    images = list(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    expected = torch.stack([to_float_normalized(pre)(img) for img in images])
    batch, reasons = _Collate(pre, to_float=True, channels_last=True)([(img, "") for img in images])
    assert batch.is_contiguous(memory_format=torch.channels_last) and reasons == [""] * 4
    torch.testing.assert_close(batch, expected, rtol=0, atol=0)
    uint8, _ = _Collate(pre, to_float=False, channels_last=True)([(img, "") for img in images])
    assert torch.equal(uint8, torch.stack(images))


def test_cache_hits_and_recomputes_only_changed_images(small_model, tmp_path):
    model, pre, runtime = small_model
    data = make_class_folder(tmp_path / "d", per_class=3)
    paths = _paths(data)
    cache_dir = tmp_path / "cache"
    first = extract_features(model, paths, pre, runtime, workers=0, cache_dir=cache_dir)
    assert first.computed == len(paths) == len(first) == 9
    again = extract_features(model, paths, pre, runtime, workers=0, cache_dir=cache_dir)
    assert again.computed == 0
    np.testing.assert_array_equal(again.array(), first.array())

    changed = paths[4]
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed)
    after = extract_features(model, paths, pre, runtime, workers=0, cache_dir=cache_dir)
    assert after.computed == 1
    same = [i for i in range(len(paths)) if i != 4]
    np.testing.assert_array_equal(after.array()[same], first.array()[same])
    assert not np.allclose(after.array()[4], first.array()[4])

    # Keyed by content, not path: a renamed copy is a hit.
    moved = tmp_path / "elsewhere.png"
    shutil.copy(paths[0], moved)
    assert extract_features(model, [str(moved)], pre, runtime, workers=0, cache_dir=cache_dir).computed == 0


def test_cache_key_separates_preprocessing_and_weights(small_model, tmp_path):
    model, pre, runtime = small_model
    paths = _paths(make_class_folder(tmp_path / "d", per_class=1))
    cache_dir = tmp_path / "cache"
    a = extract_features(model, paths, pre, runtime, workers=0, cache_dir=cache_dir)
    b = extract_features(model, paths, replace(pre, image_size=24), runtime, workers=0, cache_dir=cache_dir)
    assert b.computed == len(paths) and a.cache.dir != b.cache.dir
    before = tensors_digest(model.backbone.state_dict())
    with torch.no_grad():
        p = next(model.backbone.parameters())
        p.add_(1.0)
        changed = tensors_digest(model.backbone.state_dict())
        p.sub_(1.0)
    assert changed != before
    assert json.loads((a.cache.dir / "key.json").read_text())["weights"] == before


def test_storage_is_memory_mapped_and_streams(small_model, tmp_path):
    model, pre, runtime = small_model
    paths = _paths(make_class_folder(tmp_path / "d", per_class=5))
    feats = extract_features(model, paths, pre, runtime, workers=0, cache_dir=tmp_path / "cache")
    cache = FeatureCache(feats.cache.key, tmp_path / "cache")  # a fresh reader sees what was written
    assert len(cache) == 15 and all(isinstance(s, np.memmap) for s in cache.shards)
    shard_files = list(cache.dir.glob("*.npy"))
    assert any(np.load(f, mmap_mode="r").shape == (15, model.spec.num_features) for f in shard_files)
    chunks = list(feats.chunks(rows=4))
    assert [len(c) for c in chunks] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), feats.array())


def test_broken_files_are_left_out_and_remembered(small_model, tmp_path, capsys):
    model, pre, runtime = small_model
    data = make_class_folder(tmp_path / "d", per_class=2)
    bad = add_broken_files(data / "red")
    paths = _paths(data)
    cache_dir = tmp_path / "cache"
    feats = extract_features(model, paths, pre, runtime, workers=0, cache_dir=cache_dir)
    assert len(feats) == 6 and sorted(p for p, _ in feats.bad) == sorted(map(str, bad))
    err = capsys.readouterr().err
    assert all(str(b) in err for b in bad)
    again = extract_features(model, paths, pre, runtime, workers=0, cache_dir=cache_dir)
    assert again.computed == 0 and len(again.bad) == 3
    assert [paths[i] for i in again.positions] == again.paths


def _blobs(n_per_class=30, classes=3, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, spread, (len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("kind", ["logreg", "ncm", "sgd"])
def test_each_head_fits_a_separable_problem(kind):
    x, y = _blobs()
    xv, yv = _blobs(n_per_class=10, seed=0)
    xv = xv + np.random.default_rng(1).normal(0, 0.05, xv.shape).astype(np.float32)
    threads = torch.get_num_threads()
    head = fit_head(kind, x, y, xv, yv, num_classes=3)
    assert torch.get_num_threads() == threads
    assert head.weight.shape == (3, 16) and head.bias.shape == (3,)
    assert (head.logits(x).argmax(1) == y).all() and head.info["probe_val_acc"] == 1.0
    layer = torch.nn.Linear(16, 3)
    head.copy_to(layer)
    torch.testing.assert_close(layer(torch.from_numpy(x)).double(), torch.from_numpy(head.logits(x)), rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("kind", ["logreg", "ncm", "sgd"])
def test_a_class_without_training_images_never_wins(kind):
    x, y = _blobs(classes=2)
    head = fit_head(kind, x, y, x[:10], y[:10], num_classes=3)
    assert (head.logits(x * 10).argmax(1) != 2).all()


def test_ncm_head_is_exactly_simpleshot_nearest_mean():
    """SimpleShot (CL2N, class means normalised too) computed explicitly gives the linear head's decisions."""
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 1.0, (120, 32)).astype(np.float32)
    y = rng.integers(0, 4, 120)
    queries = rng.normal(1.0, 1.5, (500, 32)).astype(np.float32)
    head = fit_head("ncm", x, y, queries[:50], rng.integers(0, 4, 50), num_classes=4)

    mu = x.astype(np.float64).mean(0)
    norm = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    z = norm(x - mu)
    means = norm(np.stack([z[y == c].mean(0) for c in range(4)]))
    distances = np.linalg.norm(norm(queries - mu)[:, None, :] - means[None], axis=-1)
    np.testing.assert_array_equal(head.logits(queries).argmax(1), distances.argmin(1))


@pytest.mark.parametrize("kind", ["logreg", "sgd"])
def test_class_weights_raise_the_recall_of_a_rare_class(kind):
    """Two overlapping classes, 300 images against 15: unweighted, the boundary favours the common class; weighted
    n / (C n_c), the rare class is found more often (balanced validation images)."""
    rng = np.random.default_rng(0)

    def draw(n_common, n_rare):
        x = np.concatenate([rng.normal(0, 1, (n_common, 8)), rng.normal(0, 1, (n_rare, 8)) + np.eye(8)[0] * 1.5])
        return x.astype(np.float32), np.array([0] * n_common + [1] * n_rare)

    x_train, y_train = draw(300, 15)
    x_val, y_val = draw(200, 200)
    recall = {}
    for name, weight in (("plain", None), ("weighted", np.array([315 / 600, 315 / 30]))):
        head = fit_head(kind, x_train, y_train, x_val, y_val, 2, class_weight=weight)
        recall[name] = float((head.logits(x_val[y_val == 1]).argmax(1) == 1).mean())
    assert recall["weighted"] > recall["plain"] + 0.2


def test_features_constant_on_the_training_images_cannot_decide_the_head():
    # most features constant on the training images (plain pictures), one of them stray on a later image: scaled by
    # a tenth of the median std of the features that vary, not ~1e-12, it stays a few standard deviations out
    from headstart.training.heads import _standardiser

    rng = np.random.default_rng(0)
    x = np.zeros((40, 100))
    x[:, :30] = rng.normal(size=(40, 30))  # 70 of 100 features constant here
    mean, scale = _standardiser(x)
    assert scale[50] == pytest.approx(0.1 * np.median(x[:, :30].std(0)))
    later = np.zeros(100)
    later[50] = 1.0
    assert np.abs((later - mean) / scale).max() < 100
    assert _standardiser(np.ones((5, 4)))[1].tolist() == [1.0] * 4  # nothing varies: unscaled


def test_unknown_head_is_a_clear_error():
    x, y = _blobs()
    with pytest.raises(ValueError, match="choose one of logreg, ncm, sgd"):
        fit_head("svm", x, y, x, y, 3)


# The command line --------------------------------------------------------------------------------------------------

FAST = ["--image-size", "32", "--workers", "0"]


def test_embed_labelled_folder_to_npz(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=3)
    add_broken_files(data / "green")
    out = tmp_path / "emb.npz"
    assert main(["embed", "efficientnet_lite0", str(data), "--out", str(out), *FAST]) == 0
    d = np.load(out)
    assert {"features", "paths", "labels", "classes", "meta"} <= set(d.files)
    assert d["features"].shape == (9, 1280) and d["features"].dtype == np.float32
    assert list(d["classes"]) == ["blue", "green", "red"]
    for path, label in zip(d["paths"], d["labels"]):
        assert path.endswith(".png") and f"/{d['classes'][label]}/" in path
    meta = json.loads(str(d["meta"]))
    assert meta["backbone"] == "efficientnet_lite0" and meta["preprocessing"]["image_size"] == 32
    assert len(meta["skipped"]) == 3
    assert "skipping" in capsys.readouterr().err


def test_embed_unlabelled_folder_has_no_labels(tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(folder / f"{i}.jpg")
    out = tmp_path / "emb.npz"
    assert main(["embed", "efficientnet_lite0", str(folder), "--out", str(out), *FAST]) == 0
    d = np.load(out)
    assert "labels" not in d.files and d["features"].shape == (3, 1280)
    assert sorted(d["paths"]) == sorted(str(folder / f"{i}.jpg") for i in range(3))


def test_embed_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    data = make_class_folder(tmp_path / "d", per_class=2)
    out = tmp_path / "emb.parquet"
    assert main(["embed", "efficientnet_lite0", str(data), "--out", str(out), *FAST]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 6 and set(table.column_names) >= {"paths", "labels", "class", "features"}
    assert np.asarray(table.column("features").to_pylist()).shape == (6, 1280)


def test_embed_wrong_suffix_is_one_sentence(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=1)
    assert main(["embed", "efficientnet_lite0", str(data), "--out", str(tmp_path / "x.csv")]) == 2
    assert ".npz or .parquet" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["ncm", "sgd"])
def test_linear_probe_with_each_head_via_cli_then_embed_the_run(tmp_path, capsys, head):
    data = make_class_folder(tmp_path / "d", per_class=6)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--head", head,
                 "--batch-size", "8", "--json", *FAST]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["head"] == head and record["val_acc"] >= 0.8
    assert json.loads(capsys.readouterr().out)["val_acc"] >= 0.8

    # The same images again: every feature comes from the cache.
    run2 = tmp_path / "run2"
    assert main(["train", str(data), "--out", str(run2), "--strategy", "linear-probe", "--head", head,
                 "--batch-size", "8", *FAST]) == 0
    assert json.loads((run2 / "metrics.jsonl").read_text().splitlines()[0])["features_computed"] == 0
    capsys.readouterr()

    out = tmp_path / "emb.npz"
    assert main(["embed", str(run), str(data), "--out", str(out), "--workers", "0"]) == 0
    d = np.load(out)
    assert d["features"].shape == (18, 1280) and json.loads(str(d["meta"]))["preprocessing"]["image_size"] == 32
    assert main(["predict", str(run), str(data / "red"), "--format", "json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert sum(p["label"] == "red" for p in preds) >= 5
