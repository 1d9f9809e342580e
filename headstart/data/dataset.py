"""From file lists to batches: the one dataset of image files, its bad-file policy, and data loaders."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from headstart.core.errors import DataError
from headstart.data.images import BadImageError, load_image
from headstart.data.sources import Sample


class ImageFiles(Dataset):
    """``(path, label)`` pairs -> ``(image, label, path, reason)``: the one dataset every pass over image files uses
    (training, validation, test, feature extraction, evaluate, predict, adapt), with one bad-file policy.

    A file that cannot be decoded never stops its batch: it yields a blank image of the same shape as the others and
    the reason (``''`` for a good file). What happens next is the caller's choice, through the collate function:
    :func:`checked_collate` (training and evaluation, whose files were all checked before, so a failure means the
    file changed since) raises a :class:`~headstart.core.errors.DataError` naming it; :func:`flagged_collate`
    (predict, feature extraction) keeps the reasons so each file's result can say what went wrong.
    """

    def __init__(self, samples: Sequence[Sample] | Sequence[str], transform: Callable):
        self.samples = [(str(s), -1) if isinstance(s, (str, os.PathLike)) else (s[0], s[1]) for s in samples]
        self.transform = transform
        self._blank = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str, str]:
        path, label = self.samples[i]
        try:
            image = self.transform(load_image(path))
        except BadImageError as exc:
            return self.blank(), label, path, exc.reason
        return image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else image, label, path, ""

    def blank(self) -> torch.Tensor:
        if self._blank is None:
            self._blank = torch.zeros_like(self.transform(Image.new("RGB", (8, 8))).as_subclass(torch.Tensor))
        return self._blank


def broke_since_check(path: str, reason: str) -> DataError:
    """The error for a file that was readable when the images were checked and is not now."""
    return DataError(f"{path} could not be read ({reason}); it was readable when the images were checked. "
                     "Restore or remove it and run again.")


def checked_collate(items: list[tuple[torch.Tensor, int, str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``; a file that could not be decoded is an error that names it."""
    for _, _, path, reason in items:
        if reason:
            raise broke_since_check(path, reason)
    return torch.stack([x for x, *_ in items]), torch.as_tensor([y for _, y, *_ in items])


def flagged_collate(items: list[tuple[torch.Tensor, int, str, str]]):
    """``(images, labels, reasons)``: blank images where a file could not be decoded, its reason beside it."""
    return torch.stack([x for x, *_ in items]), torch.as_tensor([y for _, y, *_ in items]), [r for *_, r in items]


def default_workers() -> int:
    """Decoding workers: none on machines with two cores or fewer.

    Measured on 2 cores (resnet20 training, 32 px PNGs): one loader worker made training 6x slower (17 against
    110 img/s), with the main process waiting on data for under 1% of the time: the worker and PyTorch's spinning
    OpenMP threads fight over the two cores. With more cores, half of them decode.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(8, cpus // 2)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int | None = None,
                drop_last: bool = False, sampler=None, collate_fn=None) -> DataLoader:
    workers = default_workers() if workers is None else workers
    if collate_fn is None and isinstance(dataset, ImageFiles):
        collate_fn = checked_collate
    generator = torch.Generator().manual_seed(seed)
    # No persistent workers: `compare` runs dozens of trainings in one process and kept workers outlive each one.
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, generator=generator, drop_last=drop_last, collate_fn=collate_fn,
                      pin_memory=torch.cuda.is_available())
