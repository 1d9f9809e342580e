"""Grad-CAM (:mod:`headstart.explain`): every backbone declares a layer that gives a spatial map, and the map's
peak lands on the object: a cat pasted into one quadrant (real Lite0, its ImageNet head); pasted Fashion-MNIST
items are measured by ``benchmarks/gradcam.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.core.errors import OutputError, UsageError
from headstart.data.transforms import eval_transform
from headstart.explain import cam_layer, explain_records, grad_cam, heatmap_images, peak, torch_run
from headstart.predict.run import LoadedRun
from headstart.zoo import create_backbone, get_spec, list_specs
from headstart.zoo.model import TransferModel

# One of each family the issue names runs every time; the rest of the registry with the slow tests.
FAST = {"efficientnet_lite0", "resnet18", "hs_resnet18", "resnet20"}
NAMES = [s.name if s.name in FAST else pytest.param(s.name, marks=pytest.mark.slow) for s in list_specs()]


@pytest.mark.parametrize("name", [*NAMES, pytest.param("timm:resnet10t", marks=pytest.mark.slow)])
def test_every_backbone_declares_a_cam_layer_with_a_spatial_map(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    backbone, _, _ = create_backbone(name, pretrained=False)
    model = TransferModel(backbone, spec, num_classes=3)
    assert spec.cam_layer and cam_layer(model) is backbone.get_submodule(spec.cam_layer)
    size = 32 if spec.small_images else 64
    maps = grad_cam(model, torch.randn(2, 3, size, size), [0, 2])
    assert maps.shape == (2, size, size) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert model.training, "grad_cam puts the model back in the mode it found it in"


def test_a_layer_without_a_feature_map_is_refused_in_a_sentence():
    spec = get_spec("resnet20")
    model = TransferModel(spec.build(), spec, num_classes=2)
    with pytest.raises(UsageError, match="no spatial map; Grad-CAM needs a convolutional layer"):
        grad_cam(model, torch.randn(1, 3, 32, 32), [0], layer="fc")  # the headless backbone's identity: (B, C)
    with pytest.raises(UsageError, match="has no layer 'nope'"):
        cam_layer(model, "nope")
    without = TransferModel(spec.build(), dataclasses.replace(spec, cam_layer=""), num_classes=2)
    with pytest.raises(UsageError, match="has no convolutional feature map for Grad-CAM"):
        grad_cam(without, torch.randn(1, 3, 32, 32), [0])


@pytest.fixture(scope="module")
def lite0_imagenet():
    """EfficientNet-Lite0 with its own ImageNet classifier as the head (the offline weights, no download)."""
    backbone, spec, resolved = create_backbone("efficientnet_lite0")
    model = TransferModel(backbone, spec, num_classes=1000)
    sd = resolved.state_dict
    model.head.load_state_dict({"weight": sd["classifier.weight"], "bias": sd["classifier.bias"]})
    return model.eval()


def test_lite0_looks_at_the_cat_in_its_quadrant(lite0_imagenet):
    """scikit-image's chelsea squeezed into each quadrant of a white canvas in turn: Lite0 calls it a cat (ImageNet
    281-285) and the heat map's peak is in that quadrant of what the network sees."""
    from skimage import data as samples  # scikit-image: a test extra

    corners, pictures = [(0, 0), (1, 0), (0, 1), (1, 1)], []
    for corner in corners:
        canvas = Image.new("RGB", (512, 512), (255, 255, 255))
        canvas.paste(Image.fromarray(samples.chelsea()).resize((256, 256)), (256 * corner[0], 256 * corner[1]))
        pictures.append(eval_transform(lite0_imagenet.spec.preprocessing())(canvas))
    x = torch.stack(pictures)
    with torch.no_grad():
        predicted = lite0_imagenet(x).argmax(1).tolist()
    assert all(281 <= p <= 285 for p in predicted), predicted
    half = x.shape[-1] / 2
    for corner, heatmap in zip(corners, grad_cam(lite0_imagenet, x, predicted)):
        row, col = peak(heatmap)
        assert (col >= half, row >= half) == (bool(corner[0]), bool(corner[1])), (corner, row, col)


def test_heat_maps_are_written_beside_each_prediction_and_recorded(tmp_path):
    torch.manual_seed(0)
    backbone, spec, _ = create_backbone("resnet20", pretrained=False)
    model = TransferModel(backbone, spec, num_classes=2).eval()
    run = LoadedRun(model, ["a", "b"], spec.preprocessing(), {}, None, tmp_path)
    for folder in ("one", "two"):  # two files of the same name get two heat maps
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / folder / "x.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    records = [{"path": str(tmp_path / "one" / "x.png"), "label": "a"},
               {"path": str(tmp_path / "two" / "x.png"), "label": "b"},
               {"path": str(tmp_path / "bad.png"), "label": "a"},
               {"path": str(tmp_path / "gone.png"), "label": None, "error": "does not exist"}]
    explain_records(run, records, tmp_path / "maps")
    assert [r.get("heatmap") for r in records] == [str(tmp_path / "maps" / "x.gradcam.png"),
                                                   str(tmp_path / "maps" / "x-2.gradcam.png"), None, None]
    assert Image.open(records[0]["heatmap"]).size == (32, 32) and records[2]["heatmap_error"]
    assert isinstance(heatmap_images(run, [str(tmp_path / "bad.png")], [0])[0], str)
    with pytest.raises(OutputError, match="is a file; pass a folder"):
        explain_records(run, records[:1], tmp_path / "one" / "x.png")
    assert torch_run(run) is run


def test_an_exported_model_cannot_be_explained():
    class Onnx:
        engine, path = "onnxruntime", "model.onnx"

    with pytest.raises(UsageError, match="model.onnx is an exported model without gradients"):
        torch_run(Onnx())
