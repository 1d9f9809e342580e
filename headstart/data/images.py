"""Decoding one image file into an RGB picture, whatever its mode, orientation or bit depth."""

from __future__ import annotations

import io
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from headstart.core import archives
from headstart.core.choices import MAX_PIXELS
from headstart.core.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Images with more pixels than this are decoded at a reduced scale (JPEG's DCT scaling, otherwise ``Image.reduce``,
# a box filter) by the smallest integer factor that brings them under it: a 4096 x 4096 picture still has 4x the
# sides of any model's input, and memory per image stays bounded (a 7000 x 7000 PNG kept whole is 147 MB as RGB,
# several times that through the resize). Smaller images, 12-megapixel photos included, decode exactly as before.
REDUCE_ABOVE = 4096 * 4096


class BadImageError(DataError):
    """A file that cannot be used as an image; ``reason`` says why in a few words, ``kind`` in one word.

    Kinds: ``unreadable`` (missing, no permission), ``empty``, ``not-image``, ``corrupt`` (truncated or broken),
    ``too-large`` (over the pixel limit).
    """

    def __init__(self, path: str | Path, reason: str, kind: str = "corrupt"):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind

    def __reduce__(self):  # pickled whole: the check's facts travel between torchrun's ranks
        return type(self), (self.path, self.reason, self.kind)


@dataclass
class DecodedImage:
    """An image as training sees it (RGB, upright) and what the file itself said, for ``headstart check``."""

    image: Image.Image
    format: str | None  # what the content is, whatever the extension claims
    mode: str  # the file's own mode, before conversion to RGB
    transparency: bool
    orientation: int  # EXIF orientation tag; 1 is upright


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS and not Path(path).name.startswith(".")


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float greyscale (microscopy, medical, scientific cameras) stretched to 8 bits by its own range."""
    arr = np.asarray(im, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    # 16-bit files that use the full range keep their absolute scale; others are stretched so they are not black.
    if im.mode.startswith("I;16") or (im.mode == "I" and hi > 255):
        lo, hi = (0.0, 65535.0) if hi > 4095 else (lo, hi)
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB: transparency composited on white, CMYK and greyscale converted, 16-bit scaled."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = _to_8bit(im)
    if im.mode == "1":
        im = im.convert("L")
    return im.convert("RGB") if im.mode != "RGB" else im


def as_rgb_image(item) -> Image.Image:
    """A PIL RGB image from a PIL image, a numpy array or a path (:func:`load_image`)."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)) or min(item.shape[:2]) < 1:
            raise BadImageError("array", f"an array of shape {item.shape} is not an image (H x W, or H x W x 1/3/4)",
                                "not-image")
        arr = item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        return to_rgb(Image.fromarray(arr))
    if isinstance(item, (str, Path)):
        return load_image(item)
    raise BadImageError(type(item).__name__, f"a {type(item).__name__} is not an image (pass a PIL image, a numpy "
                        "array or a path)", "not-image")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Opens an image as RGB with its EXIF orientation applied; one over :data:`REDUCE_ABOVE` pixels is reduced.

    Raises:
        BadImageError: the file is empty, not an image, truncated, or too large to decode safely.
    """
    return decode_image(path, max_pixels, reduce_above=REDUCE_ABOVE).image


def check_resize(path: str | Path, width: int, height: int, resize: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuses an image whose eval resize (the shorter side to ``resize``, before the centre crop) would have more
    than ``max_pixels`` pixels: a 20000 x 1 PNG of 140 bytes would become 5,120,000 x 256.

    Raises:
        BadImageError: of kind ``too-large``.
    """
    short, long = sorted((width, height))
    resized = resize * int(resize * long / max(short, 1))  # torchvision's size: the longer side truncated
    if resized > max_pixels:
        raise BadImageError(path, f"{width}x{height} pixels is too elongated: resizing its shorter side to {resize} "
                                  f"would make {resized:,} pixels, over the {max_pixels:,} pixel limit; crop it "
                                  "first", "too-large")


def reduction_factor(width: int, height: int, limit: int = REDUCE_ABOVE) -> int:
    """The smallest integer factor that brings ``width x height`` (sides rounded up, as ``Image.reduce`` rounds
    them) to at most ``limit`` pixels; 1 when it already is."""
    factor = max(1, math.isqrt(width * height // max(limit, 1)))
    while math.ceil(width / factor) * math.ceil(height / factor) > limit:
        factor += 1
    return factor


def _reduce(im: Image.Image, limit: int) -> Image.Image:
    factor = reduction_factor(im.width, im.height, limit)
    if factor == 1:
        return im
    try:
        return im.reduce(factor)
    except ValueError:  # a mode reduce does not take (P, 1, 16-bit): converted first
        return to_rgb(im).reduce(factor)


# Pillow refuses images over its own limit (Image.MAX_IMAGE_PIXELS, 89 million) as it reads the header, whatever
# the caller allows; ``max_pixels`` is the one limit here, so Pillow's is lifted while a header is read. The lock
# keeps concurrent decodes from restoring each other's value (only the header read holds it, never decoding).
_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _without_pillow_limit():
    with _PILLOW_LIMIT:
        kept, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = kept


def declared_size(data: bytes, formats: tuple[str, ...] | None = None) -> tuple[int, int]:
    """The width and height an image's header declares, read without decoding (nor Pillow's pixel limit).

    Raises:
        PIL.UnidentifiedImageError, OSError: no header PIL can read (:func:`decode_image` says why in words).
    """
    with _without_pillow_limit():
        with Image.open(io.BytesIO(data), formats=formats) as im:
            return im.size


def _check_size(path: Path, im: Image.Image, max_pixels: int, resize: int | None) -> None:
    """Refuses, from the header alone, an image over ``max_pixels``, or one whose resize to ``resize`` would be."""
    if im.width * im.height > max_pixels:
        raise BadImageError(path, f"{im.width}x{im.height} pixels is over the {max_pixels:,} pixel limit "
                                  "(a decompression bomb, or an image to downscale first)", "too-large")
    if resize:
        check_resize(path, im.width, im.height, resize, max_pixels)


def _decoded(im: Image.Image, draft: int | None, reduce_above: int | None) -> DecodedImage:
    """An opened file's picture, at a reduced scale where ``draft`` or ``reduce_above`` ask for it (see
    :func:`decode_image`), turned upright and to RGB, with the file's format, mode and orientation."""
    if draft and im.format == "JPEG":
        im.draft(im.mode, (draft, draft))
    elif reduce_above and im.format in ("JPEG", "MPO") and im.width * im.height > reduce_above:
        factor = reduction_factor(im.width, im.height, reduce_above)
        im.draft(im.mode, (math.ceil(im.width / factor), math.ceil(im.height / factor)))
    im.load()
    mode, fmt = im.mode, im.format
    transparency = "A" in mode or "transparency" in im.info
    orientation = im.getexif().get(0x0112, 1)
    reduced = _reduce(im, reduce_above) if reduce_above else im
    # exif_transpose copies: needed for the file's own image (closed on return), not for a reduced one
    upright = ImageOps.exif_transpose(reduced) if reduced is im or orientation != 1 else reduced
    return DecodedImage(to_rgb(upright), fmt, mode, transparency, orientation)


def decode_image(path: str | Path, max_pixels: int = MAX_PIXELS, data: bytes | None = None,
                 formats: tuple[str, ...] | None = None, draft: int | None = None, *, resize: int | None = None,
                 reduce_above: int | None = None) -> DecodedImage:
    """``load_image`` plus the file's format, mode and orientation.

    Args:
        path: the file; named in errors, and read unless ``data`` is given.
        max_pixels: larger images are refused before decoding.
        data: the file's bytes, when the caller has read them already (to hash them, say).
        formats: the PIL formats to accept (``("JPEG", "PNG")``); others count as not an image. A server passes
            the few it needs, so an upload never reaches a decoder it did not mean to run (EPS calls Ghostscript).
        draft: for a check that needs no full-size picture: JPEGs are decoded at the smallest 1/2, 1/4 or 1/8
            scale whose sides stay at least ``draft`` pixels (the whole file is still read, so a truncated one is
            still found). Measured on 12-megapixel photos: 6 to 14x faster than the full decode.
        resize: the shorter side the model's resize gives: an image whose resize would exceed ``max_pixels``
            (:func:`check_resize`) is refused from its header too.
        reduce_above: images with more pixels are decoded at a reduced scale (:data:`REDUCE_ABOVE`): JPEGs by the
            decoder itself, others by ``Image.reduce`` as soon as they are decoded.

    Raises:
        BadImageError: the file is empty, not an image, truncated, or too large to decode safely.
    """
    try:
        if data is None and archives.is_member(path):  # a tar member or dataset row: its bytes, read in place
            data = archives.read_bytes(path)
        size = len(data) if data is not None else Path(path).stat().st_size
    except OSError as exc:
        raise BadImageError(path, f"cannot be read ({exc.strerror})", "unreadable") from None
    path = Path(path)
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)", "empty")
    try:
        with _without_pillow_limit():
            opened = Image.open(path if data is None else io.BytesIO(data), formats=formats)
        with opened as im:
            _check_size(path, im, max_pixels, resize)
            return _decoded(im, draft, reduce_above)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(path, "too many pixels to decode safely (decompression bomb)", "too-large") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not an image (the content is not a known image format)", "not-image") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system failed, not the decoder
            raise BadImageError(path, f"cannot be read ({exc.strerror})", "unreadable") from None
        reason = "truncated or corrupt" if "truncated" in str(exc).lower() or "broken" in str(exc).lower() else str(exc)
        raise BadImageError(path, f"cannot be decoded: {reason}") from None
    except (ValueError, SyntaxError) as exc:  # PIL raises these for some malformed headers
        raise BadImageError(path, f"cannot be decoded: {exc}") from None
