"""Uploads to model inputs with bounded memory, however hostile the request.

Measured before this module (issue 22): 16 black 7000 x 7000 PNGs in one request (764 KB) took the server from 0.15
to 5.2 GB and it stayed there; a 20000 x 1 PNG (140 bytes) resized its shorter side to 256 and peaked at 5.6 GB.
Now each upload is refused from its header when it or its resize for the model is over the pixel limit, decoded at
a reduced scale when it is over :data:`~headstart.data.images.REDUCE_ABOVE` pixels, and prepared for the model
(resized and cropped) as soon as it is decoded, so a request holds small tensors, not pictures. Large images are
decoded one at a time over the whole server, on a thread of lower CPU priority, and memory freed by a large request
is handed back to the system (glibc keeps it otherwise). ``benchmarks/serve_hostile.py`` measures the result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from headstart.data.images import REDUCE_ABOVE, declared_size, decode_image


class Decoder:
    """``decoder(name, data)``: one upload's bytes -> what the batcher passes to the model, or a ``BadImageError``.

    Args:
        model: a served model; with ``prepare`` (both loaders' models), the decoded image is prepared at once.
        max_pixels: the one pixel limit: on the image, and on its resize for the model (Pillow's own is lifted).
        formats: the PIL formats an upload may be in.
    """

    # Once this many pixels were decoded, freed memory is handed back to the system after the request.
    TRIM_ABOVE = 4_000_000
    # Images with more pixels are decoded one at a time, on a thread of lower CPU priority.
    LARGE = REDUCE_ABOVE

    def __init__(self, model, max_pixels: int, formats: tuple[str, ...]):
        self.model, self.max_pixels, self.formats = model, int(max_pixels), formats
        self.prepare = getattr(model, "prepare", None)
        pre = getattr(model, "preprocessing", None)
        self.resize = pre.resize if pre is not None else None
        # Normal images: no more decoding at once than cores. Large ones (a 7000 x 7000 PNG takes a second of CPU
        # and 150 MB): one at a time, niced, so that they use what normal requests leave of the CPU; a request of
        # sixteen of them then costs the others little (measured: benchmarks/serve_hostile.py).
        self.slots = threading.BoundedSemaphore(os.cpu_count() or 2)
        self.large = ThreadPoolExecutor(1, thread_name_prefix="headstart-serve-large", initializer=_lower_priority)
        self._decoded, self._lock = 0, threading.Lock()

    def __call__(self, name: str, data: bytes) -> Any:
        pixels = self._pixels(data)
        if pixels > self.LARGE:
            ready = self.large.submit(self._decode, name, data).result()
        else:
            with self.slots:
                ready = self._decode(name, data)
        with self._lock:
            self._decoded += pixels
        return ready

    def _decode(self, name: str, data: bytes) -> Any:
        image = decode_image(name, self.max_pixels, data=data, formats=self.formats, resize=self.resize,
                             reduce_above=REDUCE_ABOVE).image
        return self.prepare(image, self.max_pixels) if self.prepare else image

    def _pixels(self, data: bytes) -> int:
        """What an upload's decoding will cost: its declared pixels; 0 when it is refused from its header."""
        try:
            width, height = declared_size(data, self.formats)
        except Exception:  # noqa: BLE001  (no readable header: decode_image says why, at no cost)
            return 0
        return width * height if width * height <= self.max_pixels else 0

    def give_back(self) -> None:
        """Hands freed memory back to the system once more than :attr:`TRIM_ABOVE` pixels were decoded since the
        last time (a few ms; nothing otherwise)."""
        with self._lock:
            large = self._decoded > self.TRIM_ABOVE
            if large:
                self._decoded = 0
        if large:
            malloc_trim()


class PreparedModel:
    """The model as the batcher calls it when uploads are prepared as they are decoded: ``predict(ready, topk)``
    runs ``predict_prepared`` at most ``batch_size`` images per pass; a PIL image (a probe) is prepared here."""

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size, self.classes = model, batch_size, model.classes

    def predict(self, items: list, topk: int = 1) -> list[dict]:
        ready = [self.model.prepare(x) if isinstance(x, Image.Image) else x for x in items]
        return self.model.predict_prepared(ready, topk, batch_size=self.batch_size)


def batch_model(model, batch_size: int):
    """What the batcher should call: :class:`PreparedModel` when the model prepares its own inputs, else itself."""
    return PreparedModel(model, batch_size) if hasattr(model, "predict_prepared") else model


def _lower_priority() -> None:
    """Nice the calling thread by 10. Linux only: there a thread is a task of its own; elsewhere the call would
    nice the whole process."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass


def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: free heap pages back to the system. Pillow decodes large images in 16 MB blocks,
    below glibc's mmap threshold once it has grown, so without this a server keeps its peak after an attack."""
    return bool(_TRIM(0)) if _TRIM is not None else False
