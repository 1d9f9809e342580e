import json

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.data.check import scan
from headstart.data.images import BadImageError, load_image
from headstart.data.sources import discover, stratified_split
from headstart.data.transforms import eval_transform, train_transform
from tests.conftest import add_broken_files, make_class_folder


def test_transparent_images_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    la = Image.new("LA", (4, 4), (0, 0))
    la.save(tmp_path / "la.png")
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    for name in ("rgba.png", "la.png", "pal.png"):
        im = load_image(tmp_path / name)
        assert im.mode == "RGB"
        assert im.getpixel((0, 0)) == (255, 255, 255), name


def test_greyscale_cmyk_and_16bit_become_rgb(tmp_path):
    Image.new("L", (4, 4), 100).save(tmp_path / "grey.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    arr = np.linspace(0, 65535, 16, dtype=np.uint16).reshape(4, 4)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "grey.png").getpixel((0, 0)) == (100, 100, 100)
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60
    deep = np.asarray(load_image(tmp_path / "deep.png"))
    assert deep.dtype == np.uint8 and deep[0, 0, 0] == 0 and deep[3, 3, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (6, 2), (0, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (2, 6)


def test_broken_files_are_named_with_a_reason(tmp_path):
    bad = add_broken_files(tmp_path)
    reasons = {}
    for path in bad:
        with pytest.raises(BadImageError) as err:
            load_image(path)
        assert path.name in str(err.value)
        reasons[path.name] = err.value.reason
    assert "0 bytes" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "decoded" in reasons["truncated.jpg"]


def test_pixel_limit_refuses_decompression_bombs(tmp_path):
    Image.new("L", (200, 200)).save(tmp_path / "big.png")
    with pytest.raises(BadImageError, match="pixel limit"):
        load_image(tmp_path / "big.png", max_pixels=10_000)


def test_scan_keeps_good_and_reports_bad(tmp_path):
    folder = make_class_folder(tmp_path / "d", per_class=3)
    bad = add_broken_files(folder / "red")
    splits = discover(folder, val_fraction=0.0)
    good, reported = scan(splits.train)
    assert len(good) == 9
    assert sorted(p for p, _ in reported) == sorted(str(p) for p in bad)


def test_class_folders_split_stratified_and_repeatable(image_folder):
    a = discover(image_folder, val_fraction=0.25, seed=3)
    b = discover(image_folder, val_fraction=0.25, seed=3)
    c = discover(image_folder, val_fraction=0.25, seed=4)
    assert a.classes == ["blue", "green", "red"]
    assert a.train == b.train and a.val == b.val
    assert a.val != c.val
    assert a.counts("val") == {"blue": 2, "green": 2, "red": 2}
    assert not set(a.train) & set(a.val)
    assert json.loads(json.dumps(a.to_json()))["layout"].startswith("class folders")


def test_split_folders_and_csv_manifest(tmp_path):
    make_class_folder(tmp_path / "d" / "train", per_class=4)
    make_class_folder(tmp_path / "d" / "val", per_class=2)
    make_class_folder(tmp_path / "d" / "test", per_class=1)
    s = discover(tmp_path / "d")
    assert (len(s.train), len(s.val), len(s.test)) == (12, 6, 3)
    manifest = tmp_path / "m.csv"
    rows = ["path,label,split"] + [f"{p},{s.classes[y]},train" for p, y in s.train] + \
           [f"{p},{s.classes[y]},val" for p, y in s.val]
    manifest.write_text("\n".join(rows) + "\n")
    m = discover(manifest)
    assert m.classes == s.classes and len(m.train) == 12 and len(m.val) == 6


def test_stratified_split_keeps_singletons_in_train():
    samples = [("a", 0), ("b", 0), ("c", 0), ("d", 1)]
    keep, held = stratified_split(samples, 0.5, seed=0)
    assert ("d", 1) in keep  # one image cannot be split; it trains
    assert [label for _, label in held] == [0, 0] and len(keep) == 2


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no class subfolders"),
    (lambda p: make_class_folder(p, classes=("red",)), "only one class"),
    (lambda p: (make_class_folder(p, classes=("red", "green")), (p / "blue").mkdir()), "no usable training images"),
])
def test_unusable_data_gives_a_clear_error(tmp_path, setup, message):
    target = tmp_path / "d"
    setup(target)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        discover(target)


def test_transforms_follow_the_backbone_preprocessing():
    pre = {"image_size": 48, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 0.875}
    img = Image.new("RGB", (100, 60), (255, 255, 255))
    x = eval_transform(pre)(img)
    assert x.shape == (3, 48, 48) and torch_close(x.max(), 1.0)
    torch.manual_seed(0)
    for augment in ("light", "strong"):
        for _ in range(40):  # TrivialAugment picks one of many ops at random: try them all
            assert train_transform(pre, augment)(img).shape == (3, 48, 48)
    with pytest.raises(ValueError, match="--augment"):
        train_transform(pre, "extreme")


def torch_close(a, b):
    return abs(float(a) - b) < 1e-4
