"""``headstart serve``: the API through FastAPI's test client, the real server in a subprocess, and the page in
headless Chromium (Debian's ``chromium`` driven by Playwright)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.cli import main
from tests.conftest import make_class_folder

pytest.importorskip("fastapi", reason="serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient

from headstart.serve import create_app, load_model
from headstart.serve.batching import Batcher

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("HEADSTART_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A linear-probe run at 64 px on coloured squares, and two images of each class."""
    root = tmp_path_factory.mktemp("serve")
    data = make_class_folder(root / "data", per_class=8)
    run = root / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--image-size", "64",
                 "--batch-size", "8", "--workers", "0"]) == 0
    return run, sorted(data.rglob("*_0[01].png"))


@pytest.fixture(scope="module")
def model(trained):
    return load_model(trained[0], device="cpu")


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, max_upload_mb=1, max_pixels=200_000, topk=2)) as c:
        yield c


def files(*items):
    """httpx's ``files=``: (name, bytes) pairs in the field ``files``."""
    return [("files", (name, data)) for name, data in items]


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels and holds almost none: a decoder would have to allocate them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- the API ----------------------------------------------------------------------------------------------------------


def test_healthz_and_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["classes"] == ["blue", "green", "red"] and info["model"] == "efficientnet_lite0"
    assert info["preprocessing"]["image_size"] == 64 and info["preprocessing"]["crop"] == 64
    assert info["strategy"] == "linear-probe" and info["temperature"] > 0
    assert "test_metrics" in info  # None here: 8 images a class leave no test split
    assert info["limits"] == {"max_upload_bytes": 2**20, "max_pixels": 200_000, "max_files": 64, "topk": 2,
                              "formats": ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]}


def test_predict_equals_loaded_run_predict(client, model, trained):
    _, paths = trained
    jpeg = encode(Image.open(paths[0]).convert("RGB"), "JPEG")
    res = client.post("/predict?topk=3", files=files(*[(p.name, p.read_bytes()) for p in paths], ("x.jpg", jpeg)))
    assert res.status_code == 200, res.text
    got = res.json()["predictions"]
    want = model.predict([*paths, Image.open(io.BytesIO(jpeg))], topk=3)
    assert [g["filename"] for g in got] == [p.name for p in paths] + ["x.jpg"]
    for g, w in zip(got, want):
        assert g["label"] == w["label"] and [t["label"] for t in g["topk"]] == [t["label"] for t in w["topk"]]
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)
        assert [t["score"] for t in g["topk"]] == pytest.approx([t["score"] for t in w["topk"]], abs=1e-4)
    assert [g["label"] for g in got[:-1]] == [p.parent.name for p in paths]  # and they are right


def test_topk_defaults_to_the_servers_and_is_capped(client, trained):
    one = files((trained[1][0].name, trained[1][0].read_bytes()))
    assert len(client.post("/predict", files=one).json()["predictions"][0]["topk"]) == 2
    assert len(client.post("/predict?topk=1", files=one).json()["predictions"][0]["topk"]) == 1
    assert len(client.post("/predict?topk=50", files=one).json()["predictions"][0]["topk"]) == 3
    res = client.post("/predict?topk=0", files=one)
    assert res.status_code == 400 and "topk" in res.json()["detail"]


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        res = client.get(f"/static/{name}")
        assert res.status_code == 200 and res.headers["content-type"].startswith(kind)
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/nope.js").status_code == 404
    # Offline: nothing is loaded from another host.
    for name in ("index.html", "app.js", "style.css"):
        text = (REPO / "headstart" / "serve" / "static" / name).read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//|url\((https?:)?//|@import", text), name


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
TRUNCATED = encode(NOISE, "JPEG")[:400]
BAD_UPLOADS = [
    pytest.param(files(("notes.jpg", b"this is not an image\n")), 415, "notes.jpg", id="text"),
    pytest.param(files(("page.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")), 415, "page.eps",
                 id="eps-never-decoded"),
    pytest.param(files(("cut.jpg", TRUNCATED)), 400, "cut.jpg", id="truncated"),
    pytest.param(files(("empty.png", b"")), 400, "empty.png", id="empty-file"),
    pytest.param(files(("big.png", encode(Image.new("RGB", (600, 600))))), 413, "big.png", id="over-pixel-limit"),
    pytest.param(files(("bomb.png", png_header(1000, 1000))), 413, "bomb.png", id="header-over-pixel-limit"),
    pytest.param(files(("huge.png", png_header(100_000, 100_000))), 413, "huge.png", id="decompression-bomb"),
    pytest.param(files(("ok.png", encode(Image.new("RGB", (32, 32), "red"))), ("bad.gif", encode(NOISE, "GIF")[:1000])),
                 400,
                 "bad.gif", id="one-bad-of-two"),
]


@pytest.mark.parametrize("upload, status, name", BAD_UPLOADS)
def test_a_bad_file_is_a_json_error_that_names_it(client, upload, status, name):
    res = client.post("/predict", files=upload)
    assert res.status_code == status, res.text
    body = res.json()
    assert name in body["detail"] and [f["filename"] for f in body["files"]] == [name]
    assert "ok.png" not in body["detail"]


def test_an_upload_over_the_limit_is_413(client):
    big = files(("big.png", b"\0" * (2 * 2**20)))
    res = client.post("/predict", files=big)
    assert res.status_code == 413 and "limit is 1 MB" in res.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 2**16
    res = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xx"})
    assert res.status_code == 413 and "over the limit of 1 MB" in res.json()["detail"]


@pytest.mark.parametrize("kwargs, status, words", [
    ({}, 400, "no image files"),
    ({"files": []}, 400, "no image files"),
    ({"data": {"files": "hello"}, "files": [("other", ("", b""))]}, 400, "holds text"),
    ({"json": {"files": ["a.jpg"]}}, 415, "application/json"),
    ({"content": b"--xx\r\nnot a part", "headers": {"content-type": "multipart/form-data; boundary=xx"}}, 400, ""),
], ids=["nothing", "no-files", "text-field", "json", "malformed-multipart"])
def test_an_empty_or_malformed_request_is_400(client, kwargs, status, words):
    res = client.post("/predict", **kwargs)
    assert res.status_code == status, res.text
    assert words in res.json()["detail"]


def test_too_many_files_is_400(model):
    with TestClient(create_app(model, max_files=2)) as c:
        png = encode(Image.new("RGB", (8, 8)))
        res = c.post("/predict", files=files(*[(f"{i}.png", png) for i in range(3)]))
    assert res.status_code == 400 and "Too many files" in res.json()["detail"]


def test_hundreds_of_bad_requests_leave_the_worker_serving_and_memory_flat(client, trained):
    bad = [p.values[0] for p in BAD_UPLOADS] + [files(("big.bin", b"\0" * (2**20 + 1)))]

    def burst(n):
        for i in range(n):
            assert client.post("/predict", files=bad[i % len(bad)]).status_code in (400, 413, 415)
        assert client.post("/predict").status_code == 400

    burst(50)  # warm up: allocator pools, lazily imported codecs
    before = rss_mb()
    burst(400)
    grown = rss_mb() - before
    print(f"RSS {before:.0f} MB -> {before + grown:.0f} MB over 400 bad requests")
    good = client.post("/predict", files=files((trained[1][0].name, trained[1][0].read_bytes())))
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == trained[1][0].parent.name
    assert grown < 40, f"RSS grew {grown:.0f} MB over 400 bad requests"


def test_the_options_are_checked(model):
    for bad in ({"max_upload_mb": 0}, {"max_pixels": -1}, {"topk": 0}):
        with pytest.raises(ValueError, match="must be a (whole )?number from"):
            create_app(model, **bad)


# -- batching ----------------------------------------------------------------------------------------------------------


class _SlowModel:
    """Predicts each 'image' (an int) as its own label; the first pass says it has started, then waits until
    released, so the test knows the model thread is busy (no sleeping and hoping)."""

    classes = ("a", "b", "c")

    def __init__(self):
        self.entered, self.release, self.batches = threading.Event(), threading.Event(), []

    def predict(self, images, topk=1):
        self.entered.set()
        assert self.release.wait(10), "the test never released the model"
        self.batches.append(list(images))
        if -1 in images:
            raise RuntimeError("boom")
        return [{"label": str(i), "score": 1.0, "topk": [{"label": str(i), "score": 1.0}] * topk} for i in images]


def test_batcher_joins_waiting_requests_and_keeps_each_answer_with_its_request():
    model = _SlowModel()
    batcher = Batcher(model, max_batch=8)
    first = batcher.submit([0], topk=1)
    assert model.entered.wait(10)  # the first pass is running, held by the event: the next ones queue up
    later = [batcher.submit([i, 10 * i], topk=1 + i % 2) for i in range(1, 6)]
    model.release.set()
    assert first.result(10)[0]["label"] == "0"
    for i, f in enumerate(later, start=1):
        got = f.result(10)
        assert [r["label"] for r in got] == [str(i), str(10 * i)] and len(got[0]["topk"]) == 1 + i % 2
    # Everything that queued shares the next pass, up to max_batch images; the fifth request takes the one after.
    assert model.batches == [[0], [1, 10, 2, 20, 3, 30, 4, 40], [5, 50]]
    assert (batcher.passes, batcher.images) == (3, 11)
    # An error reaches the requests of its batch; the thread goes on.
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit([-1], topk=1).result(10)
    assert batcher.submit([7], topk=1).result(10)[0]["label"] == "7"
    batcher.close()
    assert batcher.submit([8], topk=1).result(10)[0]["label"] == "8"  # restarts after close
    batcher.close()


# -- the command ------------------------------------------------------------------------------------------------------


def test_serve_cli_errors_are_one_line(tmp_path, trained, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "not a headstart run directory" in capsys.readouterr().err
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"")
    assert main(["serve", str(model_file)]) == 2
    assert "model.onnx" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["serve", str(trained[0]), "--port", str(busy.getsockname()[1])]) == 2
    assert "pass another --port" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(trained):
    """``headstart serve RUN --port 0`` in a subprocess; yields its base URL and process once it has said both its
    address and uvicorn's "startup complete". Its output is read line by line as it comes (no polling)."""
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "serve", str(trained[0]), "--port", "0",
                             "--max-upload-mb", "1", "--device", "cpu"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said, up = [], threading.Event()

    def read():  # drains the pipe for the server's whole life, so it never blocks writing its log
        for line in proc.stdout:
            said.append(line)
            if "startup complete" in line:
                up.set()
        up.set()  # it exited: stop waiting

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(120), "".join(said)
        url = re.search(r"on (http://127\.0\.0\.1:\d+/)", "".join(said))  # printed before uvicorn starts
        assert url and proc.poll() is None, "".join(said)
        yield url.group(1), proc
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(30)


def test_the_server_answers_concurrent_requests_each_with_its_own_images(server, trained, model):
    import httpx

    url, _ = server
    paths = trained[1]
    want = {p.name: r for p, r in zip(paths, model.predict(paths, topk=2))}

    def ask(i):
        p = paths[i % len(paths)]
        with httpx.Client(base_url=url, timeout=60) as c:
            res = c.post("/predict", files=files((p.name, p.read_bytes())))
        return p.name, res

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(32)))
    for name, res in answers:
        assert res.status_code == 200, res.text
        (got,) = res.json()["predictions"]
        assert got["filename"] == name and got["label"] == want[name]["label"]
        assert got["score"] == pytest.approx(want[name]["score"], abs=1e-4)


def test_the_server_refuses_a_huge_streamed_upload_without_reading_it(server):
    import httpx

    url, proc = server
    before = rss_mb(proc.pid)
    sent = 0

    def body():  # 200 MB, chunked: the server must stop at its 1 MB limit
        nonlocal sent
        yield b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(200 * 16):
            sent += 2**16
            yield b"\0" * 2**16
    with httpx.Client(base_url=url, timeout=60) as c:
        try:
            res = c.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=xx"})
            assert res.status_code == 413
        except httpx.TransportError:  # the server answered 413 and closed while we were still sending
            pass
        assert sent < 100 * 2**20
        assert c.get("/healthz").json() == {"status": "ok"}
    # A declared 2 GB body is refused from its headers, before a byte of it is sent.
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
                    b"Content-Length: 2147483648\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 413 ")
    assert rss_mb(proc.pid) - before < 50


# -- the page, in a real browser ------------------------------------------------------------------------------------


def test_the_page_predicts_a_dropped_image_in_chromium(server, trained):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install "
                                   "-e '.[test]'")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set HEADSTART_CHROMIUM)")
    url, _ = server
    image = trained[1][0]
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            sync_api.expect(page.locator("#status")).to_contain_text("ready", timeout=20_000)
            sync_api.expect(page.locator("#classes li")).to_have_text(["blue", "green", "red"])
            page.locator("#file-input").set_input_files(str(image))
            card = page.locator(".card").first
            sync_api.expect(card).not_to_have_class(re.compile("pending"), timeout=30_000)
            sync_api.expect(card.locator(".prediction-label")).to_have_text(image.parent.name)
            sync_api.expect(card.locator(".bars li")).to_have_count(3)
            assert card.locator(".name").inner_text() == image.name
            assert card.locator("img").evaluate("img => img.naturalWidth") == 32  # the thumbnail rendered
        finally:
            browser.close()
    assert errors == []
