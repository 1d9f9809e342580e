"""On two threads, extraction decodes and runs the backbone in lanes (one thread each, 16 images a call): the
features must be those of the plain path, one image at a time through ``eval_transform`` and the unfolded network."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import headstart.features.extract as extract_module
from headstart.core.runtime import make_runtime
from headstart.data.images import load_image
from headstart.data.transforms import eval_transform
from headstart.features import extract_features, iter_features
from headstart.zoo.model import build_model


def _real_files(folder):
    """scikit-image's photographs as PNG and JPEG, RGB and grey, of different sizes; one truncated JPEG."""
    samples = pytest.importorskip("skimage.data")
    folder.mkdir()
    photos = [Image.fromarray(getattr(samples, n)()) for n in ("chelsea", "coffee", "astronaut", "camera", "rocket")]
    files = []
    for i, (box, suffix, mode) in enumerate([((0, 0, 300, 200), "png", "RGB"), ((40, 10, 640, 400), "jpg", "RGB"),
                                             ((5, 5, 33, 33), "png", "L"), ((0, 0, 512, 512), "jpg", "L"),
                                             ((100, 50, 164, 90), "jpg", "RGB"), ((0, 0, 427, 240), "png", "L")]):
        for j, photo in enumerate(photos):
            path = folder / f"{i}-{j}.{suffix}"
            photo.convert(mode).crop(box).save(path, **({"quality": 90} if suffix == "jpg" else {}))
            files.append(str(path))
    broken = folder / "broken.jpg"
    broken.write_bytes((folder / "1-0.jpg").read_bytes()[:500])
    return files[:13] + [str(broken)] + files[13:]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    runtime = make_runtime("cpu", "fp32")
    model = runtime.prepare(build_model("resnet20", 3, pretrained=False)).eval()
    return model, model.spec.preprocessing(), runtime


def test_lanes_give_the_features_of_the_plain_path_and_name_the_broken_file(resnet, tmp_path, monkeypatch):
    model, pre, runtime = resnet
    paths = _real_files(tmp_path / "images")
    lanes = []
    real = extract_module._in_lanes
    monkeypatch.setattr(extract_module, "_in_lanes", lambda *a, **k: lanes.append(a[-2]) or real(*a, **k))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        feats = extract_features(model, paths, pre, runtime, batch_size=20, workers=0, cache_dir=tmp_path / "cache")
        assert torch.get_num_threads() == 2  # the lanes' one thread each is not left behind
    finally:
        torch.set_num_threads(threads)
    assert lanes == [2]
    assert feats.bad == [(paths[13], "cannot be decoded: truncated or corrupt")]
    assert feats.paths == paths[:13] + paths[14:]
    with torch.no_grad():  # one image at a time, the unfolded network, no chunks, no lanes
        ref = torch.cat([model.forward_features(runtime.to_input(eval_transform(pre)(load_image(p))[None]))
                         for p in feats.paths])
    torch.testing.assert_close(torch.from_numpy(feats.array()), ref, rtol=1e-5, atol=1e-5)


def test_lanes_and_one_thread_agree_and_keep_the_order(resnet, tmp_path):
    model, pre, runtime = resnet
    paths = _real_files(tmp_path / "images")
    threads, out = torch.get_num_threads(), {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got = list(iter_features(model, paths, pre, runtime, batch_size=5, workers=0))
            assert [start for start, _, _ in got] == list(range(0, len(paths), 5))
            out[n] = (np.concatenate([f for _, f, _ in got]), [r for _, _, rs in got for r in rs])
    finally:
        torch.set_num_threads(threads)
    assert out[1][1] == out[2][1] and [bool(r) for r in out[2][1]] == [i == 13 for i in range(len(paths))]
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=1e-5, atol=1e-6)


def test_a_consumer_that_stops_early_leaves_no_lane_running(resnet, tmp_path):
    model, pre, runtime = resnet
    paths = _real_files(tmp_path / "images")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batches = iter_features(model, paths, pre, runtime, batch_size=4, workers=0)
        next(batches)
        batches.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("features")]
