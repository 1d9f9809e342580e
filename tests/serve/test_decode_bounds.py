"""Issue 22, points 1-3: the work and memory of decoding bounded by what the model needs, in serve and predict.

Long thin images are refused from their header (their resize, not their size, is the bomb); images over
``REDUCE_ABOVE`` pixels are decoded reduced and prepared as soon as they are decoded; ``max_pixels`` is the one
limit, above Pillow's own too. Normal images decode and predict bit for bit as before.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from headstart.cli import main
from headstart.core.preprocessing import Preprocessing
from headstart.data.images import (
    REDUCE_ABOVE,
    BadImageError,
    check_resize,
    decode_image,
    load_image,
    reduction_factor,
    to_rgb,
)
from headstart.data.transforms import eval_transform
from tests.serve.test_serve import encode, files, model, rss_mb, trained  # noqa: F401  (fixtures)

pytest.importorskip("fastapi", reason="serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient

from headstart.serve import create_app
from headstart.serve.decode import Decoder

PRE = Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")  # resize 73, crop 64


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, (width, height)))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def peak_since_reset() -> float | None:
    """Resets the process's peak RSS (VmHWM) and returns a function reading it in MB; None where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return lambda: int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                            if line.startswith("VmHWM:")).split()[1]) / 1024


# -- 1: long thin images -----------------------------------------------------------------------------------------------


def test_a_long_thin_image_is_refused_from_its_header_before_any_resize():
    thin = png(20000, 1, "L")
    assert len(thin) < 200  # 140 bytes that would resize to 5,120,000 x 256
    with pytest.raises(BadImageError) as caught:
        decode_image("thin.png", 50_000_000, data=thin, resize=256)
    assert caught.value.kind == "too-large"
    assert "20000x1" in caught.value.reason and "50,000,000 pixel limit" in caught.value.reason
    # Panoramas and tall scans are not elongated enough to matter.
    assert decode_image("pano.png", 50_000_000, data=png(8000, 400), resize=256).image.size == (8000, 400)
    check_resize("ok", 1, 20000, 256, 2_000_000_000)  # the limit decides, not a fixed ratio


def test_every_eval_transform_refuses_it_and_keeps_no_view_of_a_long_resize():
    thin = Image.new("RGB", (20000, 1))
    with pytest.raises(BadImageError, match="too elongated"):
        eval_transform(PRE)(thin)  # every engine: train's evaluation, predict, features, ONNX models
    # Within the limit it is predicted; the crop owns its memory, not a view of the 146,000 x 73 resize.
    strip = Image.new("RGB", (2000, 1))
    x = eval_transform(PRE)(strip)
    assert x.shape == (3, 64, 64) and x.untyped_storage().nbytes() == x.nbytes
    with pytest.raises(BadImageError):
        eval_transform(PRE, max_pixels=5_000_000)(strip)


def test_serve_and_predict_name_a_long_thin_image_and_answer_the_others(trained, model, tmp_path, capsys):  # noqa: F811
    run, good = trained
    with TestClient(create_app(model)) as c:
        res = c.post("/predict", files=files(("thin.png", png(20000, 1, "L"))))
        assert res.status_code == 413 and "too elongated" in res.json()["detail"]
        both = c.post("/predict", files=files(("thin.png", png(20000, 1, "L")), (good[0].name, good[0].read_bytes())))
        assert both.status_code == 413 and [f["filename"] for f in both.json()["files"]] == ["thin.png"]
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "thin.png").write_bytes(png(40000, 1, "L"))
    for p in good[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    assert main(["predict", str(run), str(folder), "--format", "json", "--device", "cpu"]) == 1
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert "too elongated" in rows["thin.png"]["error"]
    assert all(rows[p.name]["label"] for p in good[:2])


# -- 2: bounded decoding, bit-identical for normal images --------------------------------------------------------------


def test_normal_images_decode_exactly_as_pillow_does(tmp_path):
    rgba = noise(300, 200).convert("RGBA")
    rgba.putalpha(128)
    cases = {"photo.jpg": noise(3000, 2000), "rgba.png": rgba, "palette.gif": noise(64, 48).convert("P"),
             "grey.png": noise(640, 480).convert("L")}
    for name, image in cases.items():
        path = tmp_path / name
        image.save(path)
        with Image.open(path) as plain:
            want = np.asarray(to_rgb(ImageOps.exif_transpose(plain)))
        assert np.array_equal(np.asarray(load_image(path)), want), name


def test_serve_predicts_normal_images_bit_for_bit_as_the_run_does(model, trained):  # noqa: F811
    _, good = trained
    uploads = [(p.name, p.read_bytes()) for p in good] + [("photo.jpg", encode(noise(640, 480), "JPEG"))]
    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in uploads]
    want = model.predict(images, topk=3)
    assert model.predict_prepared([model.prepare(im) for im in images], topk=3) == want
    with TestClient(create_app(model, topk=3)) as c:
        got = c.post("/predict", files=files(*uploads)).json()["predictions"]
    assert [{k: v for k, v in r.items() if k != "filename"} for r in got] == want


def test_images_over_the_limit_are_decoded_reduced_png_and_jpeg():
    assert reduction_factor(4096, 4096) == 1 and reduction_factor(4097, 4096) == 2
    assert reduction_factor(7000, 7000) == 2 and reduction_factor(20000, 20000) == 5
    for fmt in ("PNG", "JPEG"):
        decoded = decode_image(f"x.{fmt}", data=encode(noise(2000, 1500), fmt), reduce_above=1_000_000)
        assert decoded.image.size == (1000, 750) and decoded.image.mode == "RGB", fmt
    # An odd factor and a mode reduce does not take (palette): converted, then reduced.
    assert decode_image("p.png", data=encode(noise(900, 300).convert("P")), reduce_above=100_000).image.size == (
        450, 150)


def test_a_reduced_image_predicts_as_its_full_size_original(model, trained, tmp_path):  # noqa: F811
    _, good = trained
    big = Image.open(good[0]).convert("RGB").resize((4200, 4200), Image.Resampling.BICUBIC)  # 17.6 M > REDUCE_ABOVE
    path = tmp_path / "big.png"
    big.save(path, compress_level=1)
    reduced = load_image(path)
    assert reduced.size == (2100, 2100) and 4200 * 4200 > REDUCE_ABOVE
    full, half = model.predict([decode_image(path).image, reduced], topk=3)
    assert full["label"] == half["label"] and abs(full["score"] - half["score"]) < 0.01


def test_many_large_black_pngs_in_one_request_keep_the_server_small(model):  # noqa: F811
    """Before: 16 black 7000 x 7000 PNGs (764 KB) took a server from 0.15 to 5.2 GB, and it stayed there."""
    black = png(5000, 5000)  # 25 M pixels each, 75 MB as RGB
    with TestClient(create_app(model)) as c:
        c.post("/predict", files=files(("warm.png", png(64, 64))))
        before, peak = rss_mb(), peak_since_reset()
        res = c.post("/predict", files=files(*[(f"black{i}.png", black) for i in range(6)]))
        assert res.status_code == 200 and len(res.json()["predictions"]) == 6
        after = rss_mb()
    if peak is not None:  # kept whole, the six pictures alone would be 450 MB
        assert peak() - before < 350, (before, peak())
    assert after - before < 100, (before, after)


def test_large_images_decode_one_at_a_time_on_a_niced_thread():
    seen = []

    class Recorder:
        classes = ["a"]

        def prepare(self, image, max_pixels):
            seen.append((image.size, threading.current_thread().name,
                         os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            return image.size

    decoder = Decoder(Recorder(), 50_000_000, ("PNG",))
    assert decoder("small.png", png(640, 480)) == (640, 480)
    assert decoder("large.png", png(4200, 4200, "L")) == (2100, 2100)
    (_, small_thread, small_nice), (_, large_thread, large_nice) = seen
    assert small_thread == threading.current_thread().name and large_thread.startswith("headstart-serve-large")
    if sys.platform.startswith("linux"):
        assert large_nice >= small_nice + 10


# -- 3: max_pixels above Pillow's own limit ----------------------------------------------------------------------------


def test_max_pixels_is_the_one_limit_above_pillows_too(model):  # noqa: F811
    side = 9600  # 92 M pixels: over Pillow's 89.5 M
    assert side * side > Image.MAX_IMAGE_PIXELS
    data = png(side, side, "L")
    kept = Image.MAX_IMAGE_PIXELS
    assert decode_image("big.png", 100_000_000, data=data, reduce_above=REDUCE_ABOVE).image.size == (3200, 3200)
    assert Image.MAX_IMAGE_PIXELS == kept  # lifted only while a header is read
    with pytest.raises(BadImageError, match="over the 50,000,000 pixel limit"):
        decode_image("big.png", 50_000_000, data=data)
    with TestClient(create_app(model, max_pixels=100_000_000)) as c:
        assert c.post("/predict", files=files(("big.png", data))).status_code == 200
    with TestClient(create_app(model, max_pixels=90_000_000)) as c:
        res = c.post("/predict", files=files(("big.png", data)))
        assert res.status_code == 413 and "90,000,000 pixel limit" in res.json()["detail"]


def test_serve_help_says_which_limit_applies(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "Pillow's own (89 million) does not apply" in " ".join(capsys.readouterr().out.split())
