"""A frozen-backbone run answered from the feature cache without torch: the same key, the same answers, and torch
only where an image's features must be computed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from headstart.core.hashing import tensors_digest
from headstart.evaluation.metrics import evaluate_run
from headstart.features.cache import torch_version
from headstart.features.extract import cache_key
from headstart.predict.cached import open_cached_run
from headstart.predict.run import expand_paths, load_run, predict_paths
from headstart.training.train import TrainConfig, train
from tests.conftest import make_class_folder


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("cached")
    data = make_class_folder(root / "data", per_class=10, size=32)
    test = make_class_folder(root / "test", per_class=4, size=32, seed=5)
    train(TrainConfig(data=str(data), out=str(root / "run"), strategy="linear-probe", image_size=32))
    return root / "run", test


def test_the_key_read_from_the_weights_file_is_the_loaded_models(probe):
    run, _ = probe
    loaded = load_run(run, device="cpu")
    cached = open_cached_run(run, device="cpu")
    assert cached is not None
    assert cached.cache.key == cache_key(loaded.model, loaded.preprocessing, loaded.runtime)
    import PIL
    import torchvision

    # torchvision and Pillow decode and resize the pixels: a new version is a new key
    assert (cached.cache.key["torchvision"], cached.cache.key["pillow"]) == (torchvision.__version__, PIL.__version__)
    np.testing.assert_array_equal(cached.weight, loaded.model.head.weight.detach().numpy())
    assert cached.temperature == loaded.temperature and cached.classes == loaded.classes


def test_numpy_fingerprint_and_torch_version_match_torchs():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2).half())
    arrays = {k: v.numpy() for k, v in module.state_dict().items()}  # num_batches_tracked: an int64 scalar
    assert tensors_digest(arrays) == tensors_digest(module.state_dict())
    arrays["1.running_mean"] = arrays["1.running_mean"] + 1
    assert tensors_digest(arrays) != tensors_digest(module.state_dict())
    assert torch_version() == torch.__version__


def test_the_torch_free_key_holds_the_same_library_versions():
    """The cached path computes the key before (and without) importing torch, torchvision or Pillow; the versions it
    reads must be the ones the loaded libraries report, or every cached evaluate would miss."""
    import PIL
    import torchvision

    from headstart.features.cache import library_versions

    code = ("import json, sys; from headstart.features.cache import library_versions; v = library_versions(); "
            "print(json.dumps({'versions': v, 'imported': sorted(m for m in ('torch', 'torchvision', 'PIL') "
            "if m in sys.modules)}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    fresh = json.loads(done.stdout)
    assert fresh["imported"] == []
    assert fresh["versions"] == library_versions()
    assert {k: fresh["versions"][k] for k in ("torch", "torchvision", "pillow")} == {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__}


def test_evaluate_and_predict_from_the_cache_equal_the_loaded_run(probe):
    run, test = probe
    loaded = load_run(run, device="cpu")
    slow = evaluate_run(loaded, test)  # fills the cache with the test images' features
    cached = open_cached_run(run, device="cpu")
    fast = evaluate_run(cached, test)
    assert cached._loaded is None  # answered without loading the model
    for key in ("accuracy", "balanced_accuracy", "num_images", "confusion_matrix", "per_class"):
        assert fast[key] == slow[key], key
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert fast["calibration"][key] == pytest.approx(slow["calibration"][key], abs=1e-6), key
    paths = expand_paths([test])
    got, want = cached.predict_paths(paths, topk=3), predict_paths(loaded, paths, topk=3)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)


def test_an_image_not_in_the_cache_loads_the_run_and_gets_its_answer(probe, tmp_path):
    run, test = probe
    folder = shutil.copytree(test, tmp_path / "more")
    make_class_folder(tmp_path / "new", per_class=1, size=32, seed=11)
    shutil.copy(tmp_path / "new" / "red" / "red_00.png", folder / "red" / "never_seen.png")
    (folder / "blue" / "broken.png").write_bytes(b"not a picture")
    cached = open_cached_run(run, device="cpu")
    assert cached.logits(expand_paths([folder])) is None
    m = evaluate_run(cached, folder)
    assert cached._loaded is not None and m["num_images"] == 13 and m["skipped"][0]["path"].endswith("broken.png")
    again = open_cached_run(run, device="cpu")  # the loaded run put the new image's features in the cache
    assert evaluate_run(again, folder)["confusion_matrix"] == m["confusion_matrix"] and again._loaded is None
    paths = expand_paths([folder])
    assert again.logits(paths) is None  # the check left the broken file out: the cache never saw it
    again.predict_paths(paths)  # so the cached engine loads the backbone, which records it as undecodable
    assert again._loaded is not None
    fresh = open_cached_run(run, device="cpu")
    results = fresh.predict_paths(paths)
    assert fresh._loaded is None  # now the cache answers every file, the broken one included
    reason = "not an image (the content is not a known image format)"
    assert [r["error"] for r in results if r.get("error")] == [reason]


def test_runs_the_cache_cannot_answer_exactly(probe, tmp_path):
    run, _ = probe
    assert open_cached_run(run, device="cuda") is None  # a GPU computes its features in another precision
    adapted = shutil.copytree(run, tmp_path / "adapted")
    config = (adapted / "config.yaml").read_text()
    (adapted / "config.yaml").write_text(config + "adapted: true\n")  # its BatchNorm statistics moved
    assert open_cached_run(adapted, device="cpu") is None
    empty = tmp_path / "empty-cache"
    assert open_cached_run(run, device="cpu", cache_dir=empty) is None and not empty.exists()


def test_a_cached_evaluate_and_predict_never_import_torch(probe):
    run, test = probe
    evaluate_run(load_run(run, device="cpu"), test)  # every feature cached
    code = ("import sys; from headstart.cli import main; "
            f"rc = [main(['evaluate', {str(run)!r}, {str(test)!r}, '--json', '--device', 'cpu']), "
            f"main(['predict', {str(run)!r}, {str(test)!r}, '--format', 'json', '--device', 'cpu'])]; "
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          env={**os.environ}, timeout=300, check=False)
    verdict = json.loads(done.stderr.strip().splitlines()[-1])
    assert verdict == {"rc": [0, 0], "torch": False}, done.stderr[-2000:]
    assert any((run / "heatmaps").glob("*.png"))  # the report's Grad-CAM overlays, kept: drawn again without torch
    assert json.loads(done.stdout.split("\n[")[0])["num_images"] == 12


def test_a_damaged_weights_file_is_one_sentence(probe, tmp_path, capsys):
    from headstart.cli import main

    run, test = probe
    damaged = shutil.copytree(run, tmp_path / "damaged")
    data = (damaged / "best.safetensors").read_bytes()
    (damaged / "best.safetensors").write_bytes(data[: len(data) // 3])
    for argv in (["evaluate", str(damaged), str(test)], ["predict", str(damaged), str(test)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "best.safetensors is not a readable safetensors file" in err and "Traceback" not in err
