"""``headstart predict --explain``: a Grad-CAM heat map per input, written into a folder and recorded in the output;
one sentence when the run cannot be explained."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from headstart.cli import main
from tests.conftest import make_class_folder

FAST = ["--image-size", "64", "--batch-size", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A linear-probe run from EfficientNet-Lite0: predict answers it from cached features, without the network."""
    root = tmp_path_factory.mktemp("explain")
    data = make_class_folder(root / "data", per_class=6)
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--no-report", *FAST]) == 0
    return root, data, run


def test_predict_explain_writes_a_heat_map_per_image_and_records_its_path(probe_run, capsys):
    root, data, run = probe_run
    maps = root / "maps"
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "green"), "--format", "json", "--explain", str(maps)]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 6 and f"heat maps: 6 written to {maps}" in captured.err
    for r in results:
        assert r["heatmap"] == str(maps / f"{r['path'].rsplit('/', 1)[1][:-4]}.gradcam.png")
        assert Image.open(r["heatmap"]).size == (64, 64)  # what the network saw, with its heat map over it
    one = data / "blue" / "blue_00.png"
    assert main(["predict", str(run), str(one), "--format", "csv", "--explain", str(maps)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["heatmap"] == str(maps / "blue_00.gradcam.png")


def test_predict_explain_refuses_what_it_cannot_explain_in_one_sentence(probe_run, tmp_path, capsys):
    root, data, run = probe_run
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    assert main(["predict", str(onnx), str(data / "red"), "--explain"]) == 2
    assert "--explain needs the run directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["predict", str(run), str(data / "red"), "--explain", str(tmp_path / "file")]) == 2
    assert "is a file; pass a folder for the heat maps" in capsys.readouterr().err
    broken = tmp_path / "broken-run"
    broken.mkdir()
    for name in ("config.yaml", "classes.json"):
        (broken / name).write_bytes((run / name).read_bytes())
    assert main(["predict", str(broken), str(data / "red"), "--explain"]) == 2
    err = capsys.readouterr().err
    assert "has no best.safetensors" in err and "Traceback" not in err
