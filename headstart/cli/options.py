"""Options that several commands take, each declared once: its spelling, type, choices, default and usual help.

A command adds the ones it takes, in the order its help lists them, and passes only what differs for it: its
default (``train``'s come from :class:`~headstart.training.config.TrainConfig`), or a help sentence of its own
(``lr-find``'s ``--model`` is "for DATA"). Free of torch, like every parser: ``headstart --help`` loads nothing heavy.

Example::

    add_batch_size(p, default=64)  # --batch-size N, "images per forward pass (default 64)"
    add_hardware(p, precision=True)  # --workers, --device, --precision
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from headstart.core.choices import AUGMENTATIONS, DEFAULT_MODEL, DUPLICATE_MODES, PRECISIONS

if TYPE_CHECKING:
    import argparse

    Group = argparse.ArgumentParser | argparse._ArgumentGroup  # where options go: a parser or one of its groups

DEVICE_HELP = "auto (default: CUDA when present), cpu, cuda or cuda:N"
WORKERS_HELP = "image decoding processes (default: as train)"
DUPLICATES_HELP = ("what counts as a copy of a training image: near (default: re-encoded, resized or brightened "
                   "copies, each confirmed on thumbnails), exact (the same bytes) or off")


def add_device(p: Group, default: str = "auto", help: str = DEVICE_HELP) -> None:
    p.add_argument("--device", default=default, help=help)


PRECISION_HELP = "auto (default: what this hardware runs fastest), bf16, fp16 or fp32"
PREDICT_PRECISION_HELP = ("auto (default: bf16 on CPUs that compute it natively and on GPUs, else fp32); fp32 gives "
                          "the numbers of the run's exported ONNX model")


def add_precision(p: Group, default: str = "auto", help: str = PRECISION_HELP) -> None:
    p.add_argument("--precision", default=default, choices=PRECISIONS, help=help)


def add_workers(p: Group, default: int | None = None, help: str = WORKERS_HELP) -> None:
    p.add_argument("--workers", type=int, default=default, help=help)


def add_hardware(p: Group, *, precision: bool = False, workers_help: str = WORKERS_HELP,
                 defaults: Callable[[str], Any] | None = None) -> None:
    """``--workers``, ``--device`` and, with ``precision``, ``--precision``: where and how the network runs.
    ``defaults``: an option's default by its name (``TrainConfig.default``), for a command that has its own."""
    usual = {"workers": None, "device": "auto", "precision": "auto"}
    default = defaults or usual.get
    add_workers(p, default("workers"), workers_help)
    add_device(p, default("device"))
    if precision:
        add_precision(p, default("precision"))


def add_batch_size(p: Group, default: int = 64, help: str = "images per forward pass (default %(default)s)") -> None:
    """``--batch-size``; ``%(default)s`` in ``help`` is the default, as argparse writes it."""
    p.add_argument("--batch-size", type=int, default=default, help=help)


def add_model(p: Group, help: str, default: str = DEFAULT_MODEL) -> None:
    p.add_argument("--model", default=default, help=help)


def add_weights(p: Group, help: str, default: str | None = None) -> None:
    p.add_argument("--weights", default=default, help=help)


def add_image_size(p: Group, help: str, default: int | None = None) -> None:
    p.add_argument("--image-size", type=int, default=default, help=help)


def add_augment(p: Group, help: str, default: str = "light") -> None:
    p.add_argument("--augment", default=default, choices=AUGMENTATIONS, help=help)


def add_seed(p: Group, help: str, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def add_val_fraction(p: Group, help: str, default: float = 0.2) -> None:
    p.add_argument("--val-fraction", type=float, default=default, help=help)


def add_max_pixels(p: Group, help: str, default: int | None) -> None:
    p.add_argument("--max-pixels", type=int, default=default, help=help)


def add_duplicates(p: Group, default: str = "near", help: str = DUPLICATES_HELP) -> None:
    p.add_argument("--duplicates", choices=DUPLICATE_MODES, default=default, help=help)


def add_overwrite(p: Group, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def add_json(p: Group, help: str) -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_label_delimiter(p: Group, default: str = ";") -> None:
    p.add_argument("--label-delimiter", default=default, metavar="SEP",
                   help="multi-label CSV (path,labels columns): what separates an image's labels (default "
                        "%(default)s)")
