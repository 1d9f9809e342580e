"""The HTTP service: ``POST /predict``, ``GET /info``, ``GET /healthz`` and an offline page at ``/``.

Every upload is untrusted. The request body is counted as it arrives and refused past the limit (413) before it is
all read; image dimensions are checked from the header before any pixel is decoded; only a few image formats reach
a decoder at all, and nothing is ever unpickled. A bad file gets a JSON error naming it, and the service goes on.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import python_multipart  # noqa: F401  (multipart parsing: missing, it fails here, not at the first upload)
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from headstart.core.errors import UsageError
from headstart.data.images import BadImageError
from headstart.serve.batching import Batcher
from headstart.serve.decode import Decoder, batch_model

# The formats an upload may be in (PIL's names; JPEG includes the MPO files of many phones).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
FIELD = "files"
# other bad files (empty, truncated, corrupt): 400; a file the model fails on while it answers others: 422
STATUS = {"not-image": 415, "too-large": 413, "unprocessable": 422}
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
              "app.js": "text/javascript; charset=utf-8"}
# The page loads nothing from elsewhere: the browser is told so.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


# The range each setting of create_app may take: beyond it a server refuses everything (1e-9 MB), or no limit is
# left (inf) and one request can take the machine down.
LIMITS = {"max_upload_mb": (0.1, 10_000), "max_pixels": (10_000, 1_000_000_000), "topk": (1, 1_000),
          "max_files": (1, 10_000), "max_batch": (1, 1_024)}
WHOLE = ("max_pixels", "topk", "max_files", "max_batch")


def check_limits(spell=lambda name: name, **values) -> None:
    """Refuses a setting of :func:`create_app` outside :data:`LIMITS` (or NaN, infinite, or a fraction where a count
    is meant) with one sentence that names it as ``spell(name)`` does and gives its range."""
    for name, value in values.items():
        low, high = LIMITS[name]
        whole = name in WHOLE
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        if not ok or (whole and value != int(value)):
            kind = "a whole number" if whole else "a number"
            raise UsageError(f"{spell(name)} must be {kind} from {low:,} to {high:,}, got {value}.")


def create_app(model, *, max_upload_mb: float = 20, max_pixels: int = 50_000_000, topk: int = 3,
               max_files: int = 64, max_batch: int = 16) -> FastAPI:
    """The service for one model.

    Args:
        model: anything with ``classes``, ``predict(images, topk)`` and ``info()`` (:func:`headstart.serve.load_model`).
        max_upload_mb: the largest request body, all files together, in megabytes (1 MB = 2^20 bytes).
        max_pixels: larger images, and those whose resize for the model would be larger (a 20000 x 1 strip), are
            refused from their header, before decoding (50 million: a 48-megapixel photo passes, a decompression bomb
            does not). The one limit: Pillow's own (89 million) does not apply. Images over 16.7 million pixels are
            decoded at a reduced scale (:mod:`headstart.serve.decode`).
        topk: classes per image unless the request asks (``/predict?topk=K``).
        max_files: the most files in one request.
        max_batch: the most images in one forward pass when requests arrive together (1: one request per pass).
    """
    check_limits(max_upload_mb=max_upload_mb, max_pixels=max_pixels, topk=topk, max_files=max_files,
                 max_batch=max_batch)
    max_bytes = int(max_upload_mb * 2**20)
    batcher = Batcher(batch_model(model, max_batch), max_batch)
    info = {**model.info(), "limits": {"max_upload_bytes": max_bytes, "max_pixels": int(max_pixels),
                                       "max_files": max_files, "topk": topk, "formats": list(FORMATS)}}
    page = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in PAGE_FILES}
    decoder = Decoder(model, max_pixels, FORMATS)  # bounded memory per image, per request and at once

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(batcher.close)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is at /openapi.json.
    app = FastAPI(title="headstart", summary=f"image classifier: {len(model.classes)} classes", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    _answer_errors_in_json(app)

    _add_page_routes(app, info, page)
    _add_predict_route(app, batcher, decoder, info, max_files, len(model.classes))
    return app


def _add_page_routes(app: FastAPI, info: dict, page: dict[str, bytes]) -> None:
    """``/healthz``, ``/info``, the page and its files. Async: they answer at once, even while every worker thread
    is decoding uploads. HEAD is answered where GET is (monitors and link checkers send it)."""

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict:
        return info

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        return _page(page, "index.html")

    @app.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in PAGE_FILES or name == "index.html":
            raise HTTPException(404, f"no such file: {name}")
        return _page(page, name)


def _add_predict_route(app: FastAPI, batcher: Batcher, decoder: Decoder, info: dict, max_files: int,
                       classes: int) -> None:
    """``POST /predict``: decode every upload (bounded), refuse the request when any file cannot be used, then the
    model's answers through the shared batcher."""

    @app.post("/predict")
    async def predict(request: Request, topk: int | None = None) -> dict:
        """One or several image files as ``multipart/form-data``, field ``files``."""
        k = topk if topk is not None else info["limits"]["topk"]
        if k < 1:
            raise HTTPException(400, f"topk must be at least 1, got {k}.")
        uploads = await _uploads(request, max_files)
        try:
            images, bad = await run_in_threadpool(_decode_all, uploads, decoder)
        finally:
            for _, upload in uploads:
                await upload.close()
        if bad:  # one bad file fails the request, so that no caller mistakes a partial answer for a whole one
            return _bad_files(bad, len(uploads))
        results, bad = await _predict_or_blame(batcher, images, min(k, classes))
        del images
        if bad:
            return _bad_files(bad, len(uploads))
        return {"predictions": [{"filename": name, **r} for (name, _), r in zip(uploads, results)]}


def _bad_files(bad: list[tuple[str, str, str]], count: int) -> JSONResponse:
    """The answer to a request with files that cannot be used: each named with its reason (``(name, reason, kind)``);
    the status of their kind when they share one, else 400."""
    codes = {STATUS.get(kind, 400) for _, _, kind in bad}
    head = "" if count == 1 else f"{len(bad)} of {count} files cannot be used: "
    return JSONResponse({"detail": head + "; ".join(f"{n}: {r}" for n, r, _ in bad),
                         "files": [{"filename": n, "error": r, "kind": kind} for n, r, kind in bad]},
                        status_code=codes.pop() if len(codes) == 1 else 400)


# A plain image every model takes: when an image fails alone and this one passes, the image is to blame.
_PROBE = Image.new("RGB", (64, 64), (128, 128, 128))


async def _predict_or_blame(batcher: Batcher, images: list[tuple[str, Any]], topk: int) -> tuple[list, list]:
    """The model's results for a request's ``(name, image)`` pairs, and the images it failed on (``(name, reason,
    kind)``; then the results are empty).

    A failed pass is tried again image by image, so that a pass shared with another request's bad image costs this
    one nothing, and an image the model cannot take is named (a 4xx) rather than failing the server (a 500). When
    even a plain image fails, the model itself is broken: that error is raised (a 500)."""
    failure = None
    try:
        results = await asyncio.wrap_future(batcher.submit([im for _, im in images], topk))
        if not any(r.get("error") for r in results):
            return results, []
    except Exception as exc:  # noqa: BLE001  (sorted out below: the image's fault or the model's)
        failure = exc
    results, bad = [], []
    for name, im in images:
        try:
            [result] = await asyncio.wrap_future(batcher.submit([im], topk))
        except Exception as exc:  # noqa: BLE001
            kind = "too-large" if isinstance(exc, MemoryError) else "unprocessable"
            bad.append((name, _model_failure(exc, im), kind))
            continue
        if result.get("error"):
            bad.append((name, str(result["error"]), "unprocessable"))
        results.append(result)
    if not bad:
        return results, []
    try:
        await asyncio.wrap_future(batcher.submit([_PROBE], 1))
    except Exception:  # noqa: BLE001
        raise failure or RuntimeError("the model fails even on a plain image") from None
    return [], bad


def _model_failure(exc: Exception, image) -> str:
    size = f"{image.width}x{image.height} pixels" if hasattr(image, "width") else "this image"
    if isinstance(exc, MemoryError):
        return f"the model ran out of memory on it ({size}); send a smaller image."
    return f"the model could not process it ({size}: {type(exc).__name__}); send an ordinary photo or scan."


def _answer_errors_in_json(app: FastAPI) -> None:
    """Every error the service gives is JSON with a ``detail`` sentence, as its own are: FastAPI's validation errors
    (a list, with 422), Starlette's 404 and 405 (one word) and an unexpected exception (plain text) included."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = (f"there is nothing at {request.url.path}; the service answers POST /predict, GET /info, "
                      "GET /healthz and its page at /.")
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not answered at {request.url.path}; send {allowed or 'another method'}."
        return JSONResponse({"detail": str(detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        said = []
        for error in exc.errors():
            where = [str(part) for part in error.get("loc", ())]
            name = " ".join(where[:1] + ["parameter"] + where[1:]) if len(where) > 1 else "the request"
            got = f", got {error['input']!r}" if error.get("input") is not None else ""
            said.append(f"the {name}: {str(error.get('msg', 'is not valid')).lower()}{got}")
        return JSONResponse({"detail": "; ".join(said)[:1000] + "."}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log; the client gets a sentence without the server's paths or code.
        return JSONResponse({"detail": f"the server failed on this request ({type(exc).__name__}); it goes on "
                                       "serving, and its log has the details."}, status_code=500)


def _page(page: dict[str, bytes], name: str) -> Response:
    return Response(page[name], media_type=PAGE_FILES[name],
                    headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-cache"})


async def _uploads(request: Request, max_files: int) -> list[tuple[str, UploadFile]]:
    """The uploaded files, with their names; an empty or malformed request is a 400 that says what to send."""
    how = f"send image files as multipart/form-data in the field '{FIELD}' (curl -F {FIELD}=@photo.jpg URL)"
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        if kind and kind != "application/x-www-form-urlencoded":
            raise HTTPException(415, f"a request of type {kind} holds no files; {how}.")
        raise HTTPException(400, f"the request holds no image files; {how}.")
    form = await request.form(max_files=max_files, max_fields=max_files + 16)
    uploads, wrong, elsewhere = [], [], []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if not (value.filename or value.size):  # a form's empty file input sends a nameless empty part: skip it
                await value.close()
            elif key != FIELD:  # one name for the field, as documented: a misspelt one is said, not guessed at
                elsewhere.append(key)
            else:
                uploads.append((value.filename or "(unnamed)", value))
        elif key == FIELD:
            wrong.append(key)
    if elsewhere:
        await form.close()
        names = ", ".join(f"'{key}'" for key in dict.fromkeys(elsewhere))
        raise HTTPException(400, f"files were sent in the field {names}, which the service does not read; {how}.")
    if not uploads:
        got = f" (the field '{FIELD}' holds text, not a file)" if wrong else ""
        raise HTTPException(400, f"the request holds no image files{got}; {how}.")
    return uploads


def _decode_all(uploads: list[tuple[str, UploadFile]], decoder: Decoder) -> tuple[list, list]:
    """Each upload decoded and prepared for the model, one at a time, or the reason it cannot be: ``(name, input)``
    and ``(name, reason, kind)`` lists. Runs in a worker thread, never on the event loop."""
    images, bad = [], []
    for name, upload in uploads:  # the decoder bounds the decoding at once, over all requests
        try:
            upload.file.seek(0)
            images.append((name, decoder(name, upload.file.read())))
        except BadImageError as exc:
            bad.append((name, exc.reason, exc.kind))
        except MemoryError:
            bad.append((name, "it is too large to decode in the memory this server has; send a smaller image.",
                        "too-large"))
        except Exception as exc:  # noqa: BLE001  (a decoder's own error on a hostile file: the file's fault)
            bad.append((name, f"it cannot be decoded ({type(exc).__name__}); it may be damaged.", "corrupt"))
    decoder.give_back()
    return images, bad


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413: at once when its Content-Length says so, otherwise as
    soon as the bytes received pass the limit (a chunked upload), so no more than the limit is ever read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(int(declared), self.max_bytes)(scope, receive, send)
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, _too_large_text(None, self.max_bytes), headers=CLOSE)
            return message

        await self.app(scope, counted, send)


# After a 413 the rest of the body is not read: the server closes the connection instead of draining it.
CLOSE = {"Connection": "close"}


def _too_large_text(size: int | None, max_bytes: int) -> str:
    limit = f"{max_bytes / 2**20:g} MB a request"
    what = f"over the limit of {limit}" if size is None else f"too large ({size / 2**20:.1f} MB; the limit is {limit})"
    return f"the upload is {what}; send fewer or smaller images, or start the server with a higher limit."


def _too_large(size: int, max_bytes: int) -> JSONResponse:
    return JSONResponse({"detail": _too_large_text(size, max_bytes)}, status_code=413, headers=CLOSE)
