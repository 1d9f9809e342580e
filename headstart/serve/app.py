"""The HTTP service: ``POST /predict``, ``GET /info``, ``GET /healthz`` and an offline page at ``/``.

Every upload is untrusted. The request body is counted as it arrives and refused past the limit (413) before it is
all read; image dimensions are checked from the header before any pixel is decoded; only a few image formats reach
a decoder at all, and nothing is ever unpickled. A bad file gets a JSON error naming it, and the service goes on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import python_multipart  # noqa: F401  (multipart parsing: missing, it fails here, not at the first upload)
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from headstart.core.errors import UsageError
from headstart.data.images import BadImageError, decode_image
from headstart.serve.batching import Batcher

# The formats an upload may be in (PIL's names; JPEG includes the MPO files of many phones).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
FIELD = "files"
STATUS = {"not-image": 415, "too-large": 413}  # other bad files (empty, truncated, corrupt): 400
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
              "app.js": "text/javascript; charset=utf-8"}
# The page loads nothing from elsewhere: the browser is told so.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(model, *, max_upload_mb: float = 20, max_pixels: int = 50_000_000, topk: int = 3,
               max_files: int = 64, max_batch: int = 16) -> FastAPI:
    """The service for one model.

    Args:
        model: anything with ``classes``, ``predict(images, topk)`` and ``info()`` (:func:`headstart.serve.load_model`).
        max_upload_mb: the largest request body, all files together, in megabytes (1 MB = 2^20 bytes).
        max_pixels: larger images are refused from their header, before decoding (50 million: a 48-megapixel photo
            passes, a decompression bomb does not).
        topk: classes per image unless the request asks (``/predict?topk=K``).
        max_files: the most files in one request.
        max_batch: the most images in one forward pass when requests arrive together (1: one request per pass).
    """
    for name, value in (("max_upload_mb", max_upload_mb), ("max_pixels", max_pixels), ("topk", topk),
                        ("max_files", max_files), ("max_batch", max_batch)):
        if not value > 0:
            raise UsageError(f"{name} must be positive, got {value}.")
    max_bytes = int(max_upload_mb * 2**20)
    batcher = Batcher(model, max_batch)
    info = {**model.info(), "limits": {"max_upload_bytes": max_bytes, "max_pixels": int(max_pixels),
                                       "max_files": max_files, "topk": topk, "formats": list(FORMATS)}}
    page = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in PAGE_FILES}
    # Decoded images are large (a 48-megapixel photo is 144 MB as RGB): no more decoding at once than cores.
    decode_slots = threading.BoundedSemaphore(os.cpu_count() or 2)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(batcher.close)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is at /openapi.json.
    app = FastAPI(title="headstart", summary=f"image classifier: {len(model.classes)} classes", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    # The small endpoints are async: they answer at once, even while every worker thread is decoding uploads.
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict:
        return info

    @app.post("/predict")
    async def predict(request: Request, topk: int | None = None) -> dict:
        """One or several image files as ``multipart/form-data``, field ``files``."""
        k = topk if topk is not None else info["limits"]["topk"]
        if k < 1:
            raise HTTPException(400, f"topk must be at least 1, got {k}.")
        uploads = await _uploads(request, max_files)
        try:
            images, bad = await run_in_threadpool(_decode_all, uploads, max_pixels, decode_slots)
        finally:
            for _, upload in uploads:
                await upload.close()
        if bad:  # one bad file fails the request, so that no caller mistakes a partial answer for a whole one
            codes = {STATUS.get(kind, 400) for _, _, kind in bad}
            head = "" if len(uploads) == 1 else f"{len(bad)} of {len(uploads)} files cannot be used: "
            return JSONResponse({"detail": head + "; ".join(f"{n}: {r}" for n, r, _ in bad),
                                 "files": [{"filename": n, "error": r, "kind": kind} for n, r, kind in bad]},
                                status_code=codes.pop() if len(codes) == 1 else 400)
        results = await asyncio.wrap_future(batcher.submit([im for _, im in images], min(k, len(model.classes))))
        del images
        return {"predictions": [{"filename": name, **r} for (name, _), r in zip(uploads, results)]}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _page(page, "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in PAGE_FILES or name == "index.html":
            raise HTTPException(404, f"no such file: {name}")
        return _page(page, name)

    return app


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
    uploads, wrong = [], []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if value.filename or value.size:  # a form's empty file input sends a nameless empty part: skip it
                uploads.append((value.filename or "(unnamed)", value))
            else:
                await value.close()
        elif key == FIELD:
            wrong.append(key)
    if not uploads:
        got = f" (the field '{FIELD}' holds text, not a file)" if wrong else ""
        raise HTTPException(400, f"the request holds no image files{got}; {how}.")
    return uploads


def _decode_all(uploads: list[tuple[str, UploadFile]], max_pixels: int,
                slots: threading.BoundedSemaphore) -> tuple[list, list]:
    """Each upload decoded to an RGB image, or the reason it cannot be: ``(name, image)`` and
    ``(name, reason, kind)`` lists. Runs in a worker thread, never on the event loop."""
    images, bad = [], []
    for name, upload in uploads:
        with slots:
            try:
                upload.file.seek(0)
                images.append((name, decode_image(name, max_pixels, data=upload.file.read(), formats=FORMATS).image))
            except BadImageError as exc:
                bad.append((name, exc.reason, exc.kind))
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
