"""Every registered backbone gets shape, backward, head and layer-group checks; weights load from test-made files."""

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

import headstart.zoo.weights as weights_module
from headstart.core import catalog
from headstart.core.errors import WeightsError
from headstart.data.transforms import eval_transform
from headstart.zoo import MissingWeightsError, create_backbone, get_spec, list_specs, resolve_weights
from headstart.zoo.__main__ import catalog_entries
from headstart.zoo.model import TransferModel, build_model
from headstart.zoo.registry import WeightSource
from headstart.zoo.weights import read_state_dict, weights_available

HEAVY = {"vgg16", "vgg16_bn", "hs_resnet101", "hs_resnet152", "convnext_tiny"}
NAMES = [pytest.param(s.name, marks=pytest.mark.slow) if s.name in HEAVY else s.name for s in list_specs()]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_shapes_groups_and_backward(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    backbone, _, _ = create_backbone(name, pretrained=False)
    model = TransferModel(backbone, spec, num_classes=3)
    size = 32 if spec.small_images else 64
    x = torch.randn(2, 3, size, size)
    assert backbone(x).shape == (2, spec.num_features)
    logits = model(x)
    assert logits.shape == (2, 3)
    # Groups cover every parameter exactly once and run from input to output.
    owners = {}
    for i in range(len(model.group_names)):
        for p in model.group_parameters(i):
            assert id(p) not in owners, f"parameter in two groups: {model.group_names[owners[id(p)]]} and {i}"
            owners[id(p)] = i
    assert len(owners) == len(list(model.parameters()))
    order = [owners[id(p)] for p in model.parameters()]
    assert order == sorted(order), "layer groups are not in input-to-output order"
    assert model.group_names[-1] == "head" and len(model.group_names) >= 3
    # Head only: the backbone gets no gradient, the head does.
    model.set_trainable(-1)
    model(x).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.weight.grad is not None


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean .*resnet50"):
        get_spec("resnet05")
    with pytest.raises(ValueError, match="timm has no model"):
        get_spec("timm:not_a_model_xyz")


def test_timm_models_by_name():
    spec = get_spec("timm:resnet10t")
    backbone = spec.build()
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, spec.num_features)
    assert spec.groups(backbone)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_mapping_predicts_imagenet_classes(name):
    """DESIGN.md's check, for each offline Lite at its native resolution: espresso (967) for skimage's coffee, a cat
    (281-285) for chelsea."""
    from skimage import data as samples  # scikit-image: a test extra, only this test's pictures

    spec = get_spec(name)
    resolved = resolve_weights(spec, download=False)
    assert resolved.source.startswith("package")
    model = timm.create_model(f"tf_{name}", pretrained=False)
    model.load_state_dict(resolved.state_dict, strict=True)
    model.eval()
    tf = eval_transform(spec.preprocessing())
    with torch.no_grad():
        coffee = model(tf(Image.fromarray(samples.coffee()))[None]).argmax().item()
        cat = model(tf(Image.fromarray(samples.chelsea()))[None]).argmax().item()
    assert coffee == 967
    assert 281 <= cat <= 285


def test_a_damaged_offline_weights_file_is_refused_in_one_sentence(tmp_path):
    """The catalog records each offline file's SHA-256: a file that differs is refused before it is loaded."""
    spec = get_spec("efficientnet_lite1")
    real = spec.sources[0].locate()
    damaged = tmp_path / "weights.pth"  # no hash in the name: only the catalog's SHA-256 can tell
    data = bytearray(Path(real).read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    source = WeightSource("package", "a damaged copy", locate=lambda: str(damaged), sha256=spec.sources[0].sha256)
    with pytest.raises(WeightsError, match="damaged or not the file headstart knows"):
        resolve_weights(dataclasses.replace(spec, sources=(source,)), download=False)


@pytest.fixture
def tv_resnet18_file(tmp_path):
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_weights_file_loads_into_torchvision_and_own_resnet(tv_resnet18_file, tmp_path):
    tv, path = tv_resnet18_file
    tv.eval()
    x = torch.randn(2, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    expected = tv(x)
    st = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, st)
    for name in ("resnet18", "hs_resnet18"):
        backbone, _, resolved = create_backbone(name, weights_file=path)
        assert resolved.source == f"file {path}"
        torch.testing.assert_close(backbone.eval()(x), expected)
        create_backbone(name, weights_file=st)  # safetensors works too


def test_weights_found_in_torch_hub_cache(tv_resnet18_file, tmp_path, monkeypatch):
    _, path = tv_resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = get_spec("resnet18")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    # The file is a stand-in, not torchvision's: its content does not hash to the name's prefix, so it is refused
    # as damaged, as a corrupted download would be.
    with pytest.raises(WeightsError, match="damaged"):
        resolve_weights(spec, download=False)
    monkeypatch.setattr(weights_module, "verify_hash_prefix", lambda path: None)
    resolved = resolve_weights(spec, download=False)
    assert resolved.source.startswith("cache")


def test_no_weights_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="--weights FILE"):
        resolve_weights(get_spec("resnet34"), download=False)


def test_weights_that_do_not_fit_are_one_sentence(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        build_model("resnet18", 3, weights_file=path)


class Evil:
    """Any class: unpickling it would run code chosen by whoever wrote the file."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="plain state"):
        read_state_dict(path)


def test_the_torch_free_catalog_matches_the_registry(tv_resnet18_file, tmp_path, monkeypatch):
    """``headstart models`` reads core/catalog.json; regenerate it with ``python -m headstart.zoo`` after adding a
    backbone."""
    assert json.loads(catalog.CATALOG.read_text()) == catalog_entries(), "run: python -m headstart.zoo"
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for k in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert catalog.torch_hub_dir() == Path(torch.hub.get_dir())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cached = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tv_resnet18_file[1].read_bytes())
    rows = {r["name"]: r for r in catalog.listing()}
    for spec in list_specs():
        found = weights_available(spec)
        assert rows[spec.name]["available"] == bool(found), spec.name
        if found:
            assert rows[spec.name]["weights"] == found
    assert rows["resnet18"]["available"] and not rows["resnet34"]["available"]
    assert rows["resnet20"]["weights"].startswith("none")
