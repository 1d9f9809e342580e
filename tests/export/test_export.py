"""headstart export and prediction with the exported file: parity with the run, refusal, and the torch-free path.

The fast tests use a tiny ONNX graph written here with ``onnx.helper`` (mean colour -> class) carrying headstart's
metadata; the slow ones export a ResNet-20 run trained for one epoch at 32 px."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.cli import main
from headstart.core.errors import ParityError, UsageError, WeightsError
from headstart.core.preprocessing import Preprocessing
from headstart.predict.metadata import ExportMetadata
from tests.conftest import COLOURS, add_broken_files, make_class_folder

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["red", "green", "blue"]
PRE = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                    crop_pct=0.875)


def tiny_onnx(path: Path, metadata: bool = True, temperature: float = 0.1) -> Path:
    """``image -> mean colour -> logits (one class per channel) -> softmax(logits / T)``, as export writes it."""
    from onnx import TensorProto, helper

    size = PRE.crop
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"]),
             helper.make_node("Div", ["logits", "t"], ["scaled"]),
             helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor("t", TensorProto.FLOAT, [], [temperature])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        meta = ExportMetadata(CLASSES, PRE, "tiny", "0.1.0", temperature, strategy="linear-probe",
                              test_metrics={"accuracy": 0.9})
        helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(path))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- fast: the torch-free predictor on a tiny graph ------------------------------------------------------------------

def test_onnx_model_predicts_files_arrays_and_images(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    data = make_class_folder(tmp_path / "data", per_class=2, size=40)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code = f"""
import json, sys
import numpy as np
from PIL import Image
from headstart.predict.onnx import OnnxModel
m = OnnxModel({str(model)!r})
images = [{str(data / "red" / "red_00.png")!r}, np.full((20, 30, 3), {COLOURS["blue"]}, np.uint8),
          Image.new("RGB", (50, 40), {COLOURS["green"]}), {str(tmp_path / "broken.png")!r}]
out = m.predict(images, topk=2)
single = m.predict(images[0], topk=2)
print(json.dumps({{"out": out, "single": single, "info": m.info(), "t": m.temperature,
                   "pre": m.preprocessing.to_dict()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert [r["label"] for r in got["out"]] == ["red", "blue", "green", None]
    assert got["out"][3]["error"] and got["out"][3]["score"] is None
    assert len(got["out"][0]["topk"]) == 2 and got["out"][0]["score"] == got["out"][0]["topk"][0]["score"]
    assert got["single"] == got["out"][0]
    assert got["t"] == pytest.approx(0.1) and got["pre"] == PRE.to_dict()
    info = got["info"]
    assert info["classes"] == CLASSES and info["source"] == "onnx" and info["input"]["shape"] == ["batch", 3, 32, 32]
    assert info["preprocessing"]["resize"] == 37 and info["test_metrics"] == {"accuracy": 0.9}
    assert info["strategy"] == "linear-probe" and info["temperature"] == pytest.approx(0.1)


def test_predict_cli_on_onnx(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    data = make_class_folder(tmp_path / "data", per_class=2, size=40)
    add_broken_files(data / "red")
    code = f"""
import sys
from headstart.cli import main
rc = main(["predict", {str(model)!r}, {str(data)!r}, "--format", "json", "--topk", "5"])
sys.exit(rc)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1, proc.stderr  # the broken files: exit code 1, as on a run
    rows = json.loads(proc.stdout)
    good = [r for r in rows if not r.get("error")]
    assert len(good) == 6 and all(Path(r["path"]).parent.name == r["label"] for r in good)
    assert all(len(r["topk"]) == 3 for r in good)  # --topk 5 clamped to the 3 classes, with a note
    assert "listing all of them" in proc.stderr and "3 of 9 images could not be predicted" in proc.stderr


def test_serve_serves_an_onnx_model(tmp_path):
    """The interface ``headstart serve`` relies on: classes, predict(images, topk) and info() with a run's keys."""
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from headstart.serve import create_app, load_model

    model = load_model(tiny_onnx(tmp_path / "tiny.onnx"))
    buf = io.BytesIO()
    Image.new("RGB", (60, 40), COLOURS["blue"]).save(buf, "PNG")
    with TestClient(create_app(model, topk=2)) as client:
        info = client.get("/info").json()
        answer = client.post("/predict", files=[("files", ("blue.png", buf.getvalue()))])
    assert info["source"] == "onnx" and info["classes"] == CLASSES and info["test_metrics"] == {"accuracy": 0.9}
    assert answer.status_code == 200, answer.text
    assert "blue" in answer.text and "red" in answer.text  # the label and the second of the top-2


def test_an_onnx_model_prepares_images_as_the_run_does(tmp_path):
    """One preprocessing for every engine: OnnxModel.prepare is the run's eval transform, number for number (it
    was a PIL re-implementation, a few levels of 255 apart, up to ~20 on noise)."""
    from headstart.data.transforms import eval_transform
    from headstart.predict.onnx import OnnxModel

    model = OnnxModel(tiny_onnx(tmp_path / "tiny.onnx"))
    pre = model.preprocessing
    rng = np.random.default_rng(0)
    for w, h in [(37, 37), (53, 41), (41, 90), (120, 64), (33, 200), (24, 30), (300, 451)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = model.prepare(image)
        assert ours.dtype == np.float32 and ours.shape == (3, pre.crop, pre.crop)
        np.testing.assert_array_equal(ours, eval_transform(pre)(image).numpy())


def test_metadata_round_trip_and_foreign_files(tmp_path):
    meta = ExportMetadata(CLASSES, PRE, "tiny", "0.1.0", 1.5, "int8-dynamic", "/runs/x", "fine-tune",
                          {"accuracy": 0.9, "per_class": {"red": {"recall": 1.0}}})
    assert ExportMetadata.from_props(meta.to_props(), "x.onnx") == meta
    with pytest.raises(WeightsError, match="no headstart metadata"):
        ExportMetadata.from_props({"producer": "someone"}, "x.onnx")
    with pytest.raises(WeightsError, match="damaged"):
        ExportMetadata.from_props({**meta.to_props(), "headstart.classes": "[not json"}, "x.onnx")


@pytest.mark.parametrize("case", ["no-metadata", "not-onnx", "missing-onnx", "missing-run", "unknown-format",
                                  "pt2-quantized", "wrong-suffix", "pt2-to-predict"])
def test_wrong_use_exits_2_with_one_sentence(tmp_path, capsys, case):
    image = make_class_folder(tmp_path / "data", per_class=1) / "red" / "red_00.png"
    (tmp_path / "garbage.onnx").write_text("not a model")
    (tmp_path / "model.pt2").write_bytes(b"PK")
    (tmp_path / "run").mkdir()
    argv, message = {
        "no-metadata": (["predict", str(tiny_onnx(tmp_path / "plain.onnx", metadata=False)), str(image)],
                        "no headstart metadata"),
        "not-onnx": (["predict", str(tmp_path / "garbage.onnx"), str(image)], "cannot be loaded as an ONNX model"),
        "missing-onnx": (["predict", str(tmp_path / "nope.onnx"), str(image)], "does not exist"),
        "missing-run": (["export", str(tmp_path / "no-run")], "not a headstart run directory"),
        "unknown-format": (["export", str(tmp_path / "run"), "--format", "tflite"], "unknown export format 'tflite'"),
        "pt2-quantized": (["export", str(tmp_path / "run"), "--format", "pt2", "--quantize", "int8"],
                          "not available for pt2"),
        "wrong-suffix": (["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.pt2")], "should end in .onnx"),
        "pt2-to-predict": (["predict", str(tmp_path / "model.pt2"), str(image)], "predict takes a run directory"),
    }[case]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err


# -- slow: a real run exported -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A ResNet-20 run (one epoch at 32 px, images 45 px so the preprocessing resizes) and its ONNX export."""
    root = tmp_path_factory.mktemp("export")
    data = make_class_folder(root / "data", per_class=8, size=45)
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), "--model", "resnet20", "--strategy", "scratch", "--epochs",
                 "1", "--batch-size", "4", "--workers", "0", "--image-size", "32"]) == 0
    assert main(["export", str(run)]) == 0
    return data, run


@pytest.mark.slow
def test_export_onnx_records_parity_and_metadata(exported, capsys):
    from headstart.core.hashing import file_digest

    _, run = exported
    model, records = run / "model.onnx", json.loads((run / "export.json").read_text())
    record = records["model.onnx"]
    assert record["format"] == "onnx" and record["sha256"] == file_digest(model) and record["bytes"] > 0
    assert record["images"] == 24 and record["images_from"]["val"] >= 1 and record["tolerance"] == 1e-4
    parity = record["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] <= 1e-4
    own = record["predict_path"]  # the file through `headstart predict MODEL.onnx`'s own path: held too
    assert own["enforced"] and own["max_prob_diff"] <= 1e-4 and own["max_input_diff_levels"] == 0
    assert {"torch", "onnxruntime", "onnx"} <= set(record["versions"]) and record["seconds"] > 0
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(props["headstart.classes"]) == json.loads((run / "classes.json").read_text())
    assert json.loads(props["headstart.preprocessing"])["crop"] == 32 and props["headstart.model"] == "resnet20"
    assert not list(run.glob(".*partial*")) and not list(run.glob("*.data"))


@pytest.mark.slow
def test_predict_on_onnx_gives_the_runs_predictions(exported, capsys, tmp_path):
    """One preprocessing for every engine: `predict` on the run (fp32) and on its exported file agree to 1e-4 in
    every probability, on the run's images and on real photographs (scikit-image's samples, JPEG and PNG)."""
    from skimage import data as samples

    data, run = exported
    add_broken_files(data / "blue")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "chelsea", "astronaut", "rocket"):
        Image.fromarray(getattr(samples, name)()).save(photos / f"{name}.jpg", quality=90)
    Image.fromarray(samples.camera()).save(photos / "camera.png")  # greyscale, as a user's scan would be
    for folder, broken in ((data, True), (photos, False)):
        results = []
        for target in (run, run / "model.onnx"):
            code, out, _ = run_cli(["predict", str(target), str(folder), "--format", "json", "--topk", "3",
                                    "--precision", "fp32"], capsys)
            assert code == (1 if broken else 0)
            results.append(json.loads(out))
        on_run, on_onnx = results
        assert [r["path"] for r in on_run] == [r["path"] for r in on_onnx]
        assert [bool(r.get("error")) for r in on_run] == [bool(r.get("error")) for r in on_onnx]
        pairs = [(a, b) for a, b in zip(on_run, on_onnx) if a["score"] is not None]
        assert len(pairs) == (24 if broken else 5)
        gaps = [abs({t["label"]: t["score"] for t in b["topk"]}[t["label"]] - t["score"]) for a, b in pairs
                for t in a["topk"]]
        assert max(gaps) < 1e-4, max(gaps)


@pytest.mark.slow
def test_failed_parity_writes_nothing(exported, tmp_path, monkeypatch):
    """The file written is checked; when its probabilities drift past the tolerance no file and no record stay."""
    import shutil

    from headstart.export import exporter
    from headstart.predict.onnx import OnnxModel

    _, run = exported
    monkeypatch.setattr(exporter, "_save_onnx", lambda module, example, path, meta: shutil.copy(run / "model.onnx",
                                                                                                 path))
    honest = OnnxModel.graph_probabilities
    monkeypatch.setattr(OnnxModel, "graph_probabilities",
                        lambda self, batch, tta=False: honest(self, batch, tta) + 1e-3)
    out = tmp_path / "drifted.onnx"
    with pytest.raises(ParityError, match="max probability difference"):
        exporter.export_run(run, "onnx", out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_moved_data_is_checked_on_synthetic_images(exported, tmp_path, monkeypatch):
    import shutil

    from headstart.export import exporter

    _, run = exported
    monkeypatch.setattr(exporter, "_save_onnx", lambda module, example, path, meta: shutil.copy(run / "model.onnx",
                                                                                                 path))
    monkeypatch.setattr(exporter, "_parity_samples", lambda rd, n: ([("/gone/a.png", 0), ("/gone/b.png", 1)],
                                                                     {"val": 2}))
    lines = []
    record = exporter.export_run(run, "onnx", out=tmp_path / "m.onnx", log=lines.append)
    assert record["images_from"] == {"synthetic": 2} and record["unreadable"] == 2 and record["parity"]["passed"]
    assert "accuracy_run" not in record["parity"] and "synthetic" in lines[-1]


@pytest.mark.slow
def test_pt2_round_trip(exported):
    import torch

    from headstart.data.transforms import eval_transform
    from headstart.export.exporter import export_run, load_pt2
    from headstart.predict.run import load_run, predict_probs

    data, run = exported
    record = export_run(run, "pt2")
    assert record["parity"]["passed"] and "predict_path" not in record
    assert set(json.loads((run / "export.json").read_text())) >= {"model.onnx", "model.pt2"}
    program, meta = load_pt2(run / "model.pt2")
    loaded = load_run(run, device="cpu", precision="fp32")
    assert meta.classes == loaded.classes and meta.preprocessing == loaded.preprocessing
    x = torch.stack([eval_transform(meta.preprocessing)(Image.open(p).convert("RGB"))
                     for p in sorted((data / "green").glob("*.png"))[:5]])
    _, probs = program.module()(x)
    torch.testing.assert_close(probs, predict_probs(loaded.model, x, loaded.runtime, temperature=loaded.temperature),
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_int8_records_agreement_instead_of_refusing(exported, capsys):
    _, run = exported
    code, out, err = run_cli(["export", str(run), "--quantize", "int8", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["file"].endswith("model.int8.onnx") and record["quantization"] == "int8-dynamic"
    assert record["fp32_parity"]["passed"] and record["parity"]["enforced"] is False
    assert 0 <= record["parity"]["top1_agreement"] <= 1 and "accuracy_change" in record["parity"]
    from headstart.predict.onnx import OnnxModel

    assert OnnxModel(run / "model.int8.onnx").metadata.quantization == "int8-dynamic"


def test_export_rejects_bad_options_before_loading(tmp_path):
    from headstart.export.exporter import export_run

    with pytest.raises(UsageError, match="tolerance"):
        export_run(tmp_path, "onnx", tolerance=0)
