"""Issue 22, points 4-8: what a hostile or careless user sends to ``serve``, ``predict``, ``report`` and ``export``
gets one JSON error or one sentence, never a 500, a traceback, a hang or a run's file written over."""

from __future__ import annotations

import csv
import io
import math
import os
import threading

import pytest
from PIL import Image

from headstart.cli import main
from headstart.core.errors import OutputError, UsageError
from headstart.data.rundir import RunDir, refuse_run_files

pytest.importorskip("fastapi", reason="serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient

from headstart.data.sources import discover
from headstart.serve import app as serve_app
from headstart.serve import create_app
from tests.conftest import make_class_folder
from tests.serve.test_serve import client, encode, files, model, trained  # noqa: F401  (fixtures)


class _PickyModel:
    """Predicts every image as class "a", except that it fails on images wider than 500 pixels (MemoryError past
    2000), as a real model may on an odd shape; ``broken`` fails on everything (the model's own fault)."""

    classes = ["a", "b"]

    def __init__(self, broken: bool = False):
        self.broken = broken

    def predict(self, images, topk=1):
        for im in images:
            if self.broken or im.width > 500:
                raise MemoryError() if im.width > 2000 else RuntimeError("shape mismatch")
        return [{"label": "a", "score": 0.9, "topk": [{"label": "a", "score": 0.9}][:topk]} for _ in images]

    def info(self):
        return {"source": "test"}


def png(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 30, 30)))


def json_error(res, status: int) -> str:
    """The response's ``detail``, checked to be one sentence of JSON with ``status``."""
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json"), res.text
    detail = res.json()["detail"]
    assert isinstance(detail, str) and detail, detail
    return detail


# -- 4: one error shape, no 500 for any input ------------------------------------------------------------------------


def test_every_error_is_json_with_a_detail_sentence(client):  # noqa: F811
    one = files(("a.png", png(16, 16)))
    assert "topk" in json_error(client.post("/predict?topk=abc", files=one), 400)
    assert "nothing at /nope" in json_error(client.get("/nope"), 404)
    assert "POST" in json_error(client.get("/predict"), 405)
    assert "DELETE" in json_error(client.delete("/info"), 405)


def test_an_image_the_model_fails_on_is_a_4xx_that_names_it_and_the_others_go_on():
    with TestClient(create_app(_PickyModel())) as c:
        res = c.post("/predict", files=files(("ok.png", png(40, 40)), ("wide.png", png(600, 4))))
        detail = json_error(res, 422)
        assert "wide.png" in detail and "ok.png" not in detail and "600x4" in detail
        assert [f["filename"] for f in res.json()["files"]] == ["wide.png"]
        assert "out of memory" in json_error(c.post("/predict", files=files(("huge.png", png(3000, 2)))), 413)
        assert c.post("/predict", files=files(("ok.png", png(40, 40)))).json()["predictions"][0]["label"] == "a"


def test_a_broken_model_or_decoder_is_json_too(monkeypatch):
    with TestClient(create_app(_PickyModel(broken=True)), raise_server_exceptions=False) as c:
        detail = json_error(c.post("/predict", files=files(("ok.png", png(40, 40)))), 500)
        assert "MemoryError" not in detail and "RuntimeError" in detail and "/" not in detail

    def explode(*args, **kwargs):
        raise ZeroDivisionError("a decoder's bug")
    if hasattr(serve_app, "Decoder"):  # uploads decoded by a Decoder (bounded memory), or by decode_image directly
        monkeypatch.setattr(serve_app.Decoder, "__call__", explode)
    else:
        monkeypatch.setattr(serve_app, "decode_image", explode)
    with TestClient(create_app(_PickyModel())) as c:
        assert "x.png: it cannot be decoded" in json_error(c.post("/predict", files=files(("x.png", b"\x89PNG"))), 400)


# -- 6: numeric options checked before anything starts ---------------------------------------------------------------


@pytest.mark.parametrize("name, value", [("max_upload_mb", math.inf), ("max_upload_mb", math.nan),
                                         ("max_upload_mb", 1e-9), ("max_upload_mb", -1), ("max_pixels", 0),
                                         ("max_pixels", 10**15), ("topk", 2.5), ("max_files", 0),
                                         ("max_batch", 10**6), ("topk", True)])
def test_absurd_limits_are_refused_with_their_range(name, value):
    with pytest.raises(UsageError, match=f"{name} must be .* from .* to"):
        create_app(_PickyModel(), **{name: value})


@pytest.mark.parametrize("option, value", [("--max-upload-mb", "inf"), ("--max-upload-mb", "1e-9"),
                                           ("--max-upload-mb", "nan"), ("--max-pixels", "-5"), ("--topk", "0"),
                                           ("--max-batch", "0")])
def test_serve_refuses_an_absurd_option_in_one_sentence_before_loading(tmp_path, capsys, option, value):
    # The run does not exist: the option is said first, so it was checked before the model was looked for.
    assert main(["serve", str(tmp_path / "no-run"), option, value, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"serve: error: {option} must be" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_evaluate_refuses_a_batch_size_below_one(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


# -- 5: nothing is written over a run's own files ---------------------------------------------------------------------


def test_report_refuses_to_write_over_the_runs_weights(trained, capsys, tmp_path):  # noqa: F811
    run = trained[0]
    weights = (run / RunDir.BEST).read_bytes()
    assert main(["report", str(run), "--out", str(run / RunDir.BEST), "--top-losses", "0"]) == 2
    assert "would replace this run's own best.safetensors" in capsys.readouterr().err
    assert (run / RunDir.BEST).read_bytes() == weights
    link = tmp_path / "innocent.html"
    link.symlink_to(run / RunDir.CONFIG)  # a link into the run is the run's file
    assert main(["report", str(run), "--out", str(link), "--top-losses", "0"]) == 2
    assert "config.yaml" in capsys.readouterr().err and (run / RunDir.CONFIG).read_text().strip()


def test_no_output_replaces_another_runs_files(tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    for run in (own, other):
        run.mkdir()
        (run / RunDir.CONFIG).write_text("model: x\n")
    refuse_run_files([own / RunDir.REPORT], own=own, allowed=(RunDir.REPORT,))  # its own report: fine
    refuse_run_files([tmp_path / "elsewhere.html", own / "notes.html"], own=own, allowed=(RunDir.REPORT,))
    for target, match in [(other / RunDir.REPORT, "the run .*other's own report.html"),
                          (own / RunDir.SPLIT, "this run's own split.json"),
                          (own / RunDir.TENSORBOARD / "events.out", "own tensorboard"),
                          (own / RunDir.CURVES, "own training_curves.png")]:
        with pytest.raises(OutputError, match=match):
            refuse_run_files([target], own=own, allowed=(RunDir.REPORT,))


def test_export_refuses_another_runs_files_before_exporting(trained, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("onnxruntime")
    other = tmp_path / "other"
    other.mkdir()
    (other / RunDir.CONFIG).write_text("model: x\n")
    (other / RunDir.ONNX).write_bytes(b"the other run's model")
    assert main(["export", str(trained[0]), "--out", str(other / RunDir.ONNX)]) == 2
    assert "would replace the run" in capsys.readouterr().err
    assert (other / RunDir.ONNX).read_bytes() == b"the other run's model"
    # A new name there still updates that run's export.json: refused too.
    assert main(["export", str(trained[0]), "--out", str(other / "mine.onnx")]) == 2
    assert "export.json" in capsys.readouterr().err and not (other / "mine.onnx").exists()


# -- 7: only files are read from a folder -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_predict_skips_a_fifo_named_like_an_image_and_refuses_one_named_directly(trained, tmp_path):  # noqa: F811
    folder = tmp_path / "new"
    folder.mkdir()
    Image.open(trained[1][0]).save(folder / "real.png")
    os.mkfifo(folder / "pipe.png")
    got = {}
    worker = threading.Thread(target=lambda: got.update(rc=main(["predict", str(trained[0]), str(folder)])),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert got.get("rc") == 0, "predict hung on a FIFO (or failed)"
    assert main(["predict", str(trained[0]), str(folder / "pipe.png")]) == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_training_data_discovery_lists_only_files(tmp_path):
    data = make_class_folder(tmp_path / "data", per_class=4)
    os.mkfifo(data / "red" / "pipe.png")
    splits = discover(data)
    listed = [p for p, _ in splits.train + splits.val]
    assert len(listed) == 12 and not any(p.endswith("pipe.png") for p in listed)


# -- 8: the smaller ones ----------------------------------------------------------------------------------------------


def test_csv_cells_that_look_like_formulas_are_inert(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    name = '=HYPERLINK("x.example", "click").png'  # no slash: a file name
    for evil in (name, "-plain.png", "@sum.png"):
        Image.open(trained[1][0]).save(tmp_path / evil)
    monkeypatch.chdir(tmp_path)  # relative names: the cells begin with the file names
    assert main(["predict", str(trained[0]), "--format", "csv", "--", name, "-plain.png", "@sum.png"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [row[0] for row in rows[1:]] == ["'" + name, "'-plain.png", "'@sum.png"]
    assert rows[1][1] in ("blue", "green", "red") and float(rows[1][2]) > 0  # labels and scores as they were


def test_info_names_the_run_without_the_servers_paths(client, trained):  # noqa: F811
    text = client.get("/info").text
    assert str(trained[0]) not in text and str(trained[0].parent) not in text
    assert client.get("/info").json()["run"] == trained[0].name


def test_predict_says_what_it_left_out_of_a_folder(trained, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    Image.open(trained[1][0]).save(folder / "a.png")
    # A PNG by its bytes: named directly, it predicts.
    Image.open(trained[1][0]).save(folder / "sub" / "photo.heic", "PNG")
    (folder / "notes.txt").write_text("x")
    (folder / ".DS_Store").write_bytes(b"\0")
    assert main(["predict", str(trained[0]), str(folder)]) == 0
    err = capsys.readouterr().err
    assert "left out 2 files (.heic, .txt)" in err or "left out 2 files (.txt, .heic)" in err
    assert main(["predict", str(trained[0]), str(folder / "sub" / "photo.heic"), "--format", "json"]) == 0
    assert '"label"' in capsys.readouterr().out


def test_a_file_where_a_run_belongs_is_called_a_file(trained, capsys):  # noqa: F811
    config = trained[0] / RunDir.CONFIG
    for argv in (["predict", str(config), str(trained[1][0])], ["report", str(config)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is a file" in err and "does not exist" not in err


def test_head_is_answered_where_get_is(client):  # noqa: F811
    for path in ("/", "/healthz", "/static/app.js"):
        res = client.head(path)
        assert res.status_code == 200 and res.content == b"", path


def test_files_sent_in_another_field_are_refused_by_name(client):  # noqa: F811
    detail = json_error(client.post("/predict", files=[("file", ("a.png", png(16, 16)))]), 400)
    assert "'file'" in detail and "field 'files'" in detail
