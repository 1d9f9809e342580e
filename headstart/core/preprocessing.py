"""How an image becomes the tensor a backbone expects: one typed record from the zoo to the exported model.

The zoo's spec says what its weights were trained with; ``train`` records it (with the run's image size) in
``config.yaml`` and in the weights' header; transforms, the feature cache, ``predict`` and ``export`` read it from
there. A run written before this record existed stored a plain dict with the same keys: :meth:`Preprocessing.of`
reads both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from headstart.core.errors import UsageError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to :attr:`resize`, centre-crop :attr:`crop` square, scale to [0, 1], normalise.

    Attributes:
        image_size: the side of the square the network sees (the crop).
        mean, std: per-channel normalisation (RGB), on the [0, 1] scale.
        interpolation: ``nearest``, ``bilinear`` or ``bicubic``, as the weights were trained.
        crop_pct: the crop's share of the resized image: ``resize = round(image_size / crop_pct)``.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def __post_init__(self):
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if self.image_size < 8:
            raise UsageError(f"the image size must be at least 8 pixels, got {self.image_size}.")
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct}.")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{self.interpolation}'.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError(f"mean and std need three values each (std > 0), got {self.mean} and {self.std}.")

    @property
    def crop(self) -> int:
        return self.image_size

    @property
    def resize(self) -> int:
        return int(round(self.image_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``config.yaml``, weights' header, feature-cache key): plain lists and numbers."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    def describe(self) -> dict[str, Any]:
        """:meth:`to_dict` with the derived sizes spelled out, for people and for other runtimes (export)."""
        return {**self.to_dict(), "resize": self.resize, "crop": self.crop, "input": "RGB, float32 in [0, 1] "
                "after resize and crop, then (x - mean) / std, NCHW"}

    @classmethod
    def of(cls, value: Preprocessing | dict) -> Preprocessing:
        """A :class:`Preprocessing` from itself or from its stored dict (extra keys such as ``resize`` ignored)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"expected Preprocessing or its dict, got {type(value).__name__}.")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})
