"""The report's pictures, drawn with matplotlib (Agg) and returned as PNG bytes to be inlined in the page."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.core.io import write_bytes
from headstart.data.images import load_image

DPI = 144  # drawn at twice the size shown: sharp on high-density screens and in print
PHASE_SHADES = ("#f3f6fa", "#ffffff")
COLOURS = {"train": "#0969da", "val": "#d1242f", "val_calibrated": "#8250df"}


def figure(**kwargs):
    """A matplotlib figure drawn by Agg, without pyplot: nothing global to close, and pyplot's import (half a
    second on a small machine) is not paid by ``evaluate``'s report."""
    from matplotlib.figure import Figure  # matplotlib: a second, paid only when a figure is drawn

    return Figure(**kwargs)


def kept(path: Path, sources: list[Path], draw, *args) -> bytes:
    """The figure ``draw(*args)`` as the run file ``path``: read back while it is newer than every file in
    ``sources`` (what it is drawn from), else drawn and written. ``evaluate`` refreshes the report, and most of its
    figures have not changed; a run folder that cannot be written is not an error (the figure is drawn each time)."""
    try:
        made = path.stat().st_mtime_ns
        if all(not src.exists() or src.stat().st_mtime_ns <= made for src in sources):
            return path.read_bytes()
    except OSError:
        pass
    data = draw(*args)
    try:
        write_bytes(path, data)
    except OSError:
        pass
    return data


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def css_width(png_bytes: bytes) -> int:
    """The width a figure drawn at :data:`DPI` should take on the page: its size in inches at 96 CSS px/inch."""
    return round(int.from_bytes(png_bytes[16:20], "big") * 96 / DPI)


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["global_epoch"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _phases(records: list[dict]) -> list[tuple[str, int, int]]:
    """``(name, first global epoch, last global epoch)`` of each phase, in order."""
    out: list[list] = []
    for r in records:
        if out and out[-1][0] == r["phase"]:
            out[-1][2] = r["global_epoch"]
        else:
            out.append([r["phase"], r["global_epoch"], r["global_epoch"]])
    return [tuple(p) for p in out]


def learning_rates(record: dict) -> dict[str, float]:
    """Each layer group's learning rate in a metrics record: ``lrs`` (group -> rate) when the record holds it, else
    the head's ``lr``; none for a head fitted on features."""
    if isinstance(record.get("lrs"), dict):
        return {str(k): float(v) for k, v in record["lrs"].items()}
    if isinstance(record.get("lr"), (int, float)):
        return {"head": float(record["lr"])}
    return {}


def training_curves(records: list[dict], best_epoch: int | None = None) -> bytes:
    """Loss, accuracy and learning rate by epoch; phases shaded and named, the shipped epoch marked."""
    fig = figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    phases = _phases(records)
    for ax in axes:
        for i, (name, first, last) in enumerate(phases):
            ax.axvspan(first - 0.5, last + 0.5, color=PHASE_SHADES[i % 2], zorder=0)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#1a7f37", ls="--", lw=1, zorder=1)
        ax.grid(alpha=0.25, zorder=1)
        ax.set_xlabel("epoch")
        ax.spines[["top", "right"]].set_visible(False)
    loss, acc, lr = axes
    for key, label, colour in (("train_loss", "train", COLOURS["train"]), ("val_loss", "validation", COLOURS["val"]),
                               ("val_loss_calibrated", "validation, calibrated", COLOURS["val_calibrated"])):
        x, y = _series(records, key)
        if x:
            loss.plot(x, y, marker="o", ms=3.5, lw=1.6, label=label, color=colour,
                      ls=":" if key.endswith("calibrated") else "-")
    for key, label, colour in (("train_acc", "train", COLOURS["train"]), ("val_acc", "validation", COLOURS["val"])):
        x, y = _series(records, key)
        if x:
            acc.plot(x, [100 * v for v in y], marker="o", ms=3.5, lw=1.6, label=label, color=colour)
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for name, rate in learning_rates(r).items():
            groups.setdefault(name, []).append((r["global_epoch"], rate))
    from matplotlib import colormaps  # matplotlib: a second, paid only when a figure is drawn

    cmap = colormaps["viridis"]
    for i, (name, pts) in enumerate(groups.items()):
        lr.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1.4, label=name,
                color=cmap(i / max(1, len(groups) - 1)) if len(groups) > 1 else COLOURS["train"])
    positive = [v for pts in groups.values() for _, v in pts if v > 0]
    if positive and max(positive) / min(positive) > 100:  # warm-up from ~0 or layer-wise decay: decades apart
        lr.set_yscale("symlog", linthresh=min(positive))
    else:
        lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    loss.set_title("loss")
    acc.set_title("accuracy (%)")
    lr.set_title("learning rate (end of epoch)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False, ncol=2 if ax is lr and len(groups) > 4 else 1)
        for name, first, last in phases:
            ax.text((first + last) / 2, 0.99, name, ha="center", va="top", fontsize=8, color="#59636e",
                    transform=ax.get_xaxis_transform())
        ax.set_xticks(range(records[0]["global_epoch"], records[-1]["global_epoch"] + 1,
                            max(1, math.ceil(len(records) / 12))))
    fig.tight_layout()
    return png(fig)


def reliability_diagrams(panels: list[tuple[str, dict]]) -> bytes:
    """One reliability diagram per ``(title, calibration)``: accuracy against confidence in each bin of top-1
    confidence, before (T = 1) and after the run's temperature; the diagonal is perfect calibration and a
    marker's area is its bin's share of the images."""
    fig = figure(figsize=(3.6 * len(panels), 3.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, cal) in zip(axes[0], panels):
        ax.plot([0, 1], [0, 1], color="#8c959f", lw=1, ls="--", label="perfectly calibrated")
        for key, label, colour in (("reliability_before", f"raw (T = 1): ECE {cal['ece_before']:.3f}", "#d1242f"),
                                   ("reliability_after", f"T = {cal['temperature']:.2f}: ECE {cal['ece_after']:.3f}",
                                    "#0969da")):
            bins = cal.get(key)
            if not bins:
                continue
            pts = [(c, a, n) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
            if not pts:
                continue
            total = sum(n for *_, n in pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, lw=1.4, alpha=0.85, marker="o", ms=4,
                    label=label)
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[12 + 260 * n / total for *_, n in pts],
                       color=colour, alpha=0.35, zorder=3, clip_on=False)
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.0)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence (top-1 score)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title} ({cal.get('images', '?')} images)", fontsize=10)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="upper left", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png(fig)


def confusion_image(matrix: list[list[int]], classes: list[str]) -> bytes:
    """A confusion matrix too large for a table: row-normalised colours, no numbers."""
    cm = np.asarray(matrix, dtype=np.float64)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    n = len(classes)
    side = min(14.0, 3 + 0.12 * n)
    fig = figure(figsize=(side, side))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 80:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(n), classes, fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return png(fig)


def thumbnail(path: str | Path, size: int = 96) -> tuple[bytes, str]:
    """A small copy of an image (longest side at most ``size``) as JPEG bytes and its MIME type; PNG for images
    with few colours (line art, greyscale clothes and digits), where JPEG smears edges."""
    return picture_bytes(load_image(path), size)


def picture_bytes(image: Image.Image, size: int = 96) -> tuple[bytes, str]:
    """:func:`thumbnail` of an image in memory (a heat map)."""
    if max(image.size) <= size // 2:  # a small image (28-px Fashion-MNIST) is enlarged in whole pixels: crisp
        factor = size // max(image.size)
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    if image.getcolors(256) is None:
        image.save(buf, format="JPEG", quality=85, optimize=True)
        return buf.getvalue(), "image/jpeg"
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), "image/png"
