"""TensorBoard: the metrics lines of a run as scalars, and the test confusion matrix as an image at the end.

A hook on the place where ``metrics.jsonl`` is written, not a second loop: ``on_epoch`` takes the same record.
Needs the optional extra ``headstart[tensorboard]``; watch with ``tensorboard --logdir RUN/tensorboard``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.core.errors import UsageError
from headstart.evaluation.metrics import plot_confusion
from headstart.report.figures import learning_rates

# metrics.jsonl key -> TensorBoard tag; "/" groups the charts (loss, accuracy...) in TensorBoard's page.
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_loss_calibrated": "loss/val_calibrated",
           "train_acc": "accuracy/train", "val_acc": "accuracy/val", "val_temperature": "calibration/val_temperature",
           "trainable_params": "model/trainable_params", "seconds": "time/epoch_seconds"}
FINAL = {"test_acc": "test/accuracy", "test_balanced_acc": "test/balanced_accuracy", "val_acc": "final/val_accuracy",
         "best_val_loss": "final/best_val_loss_calibrated"}


class TensorBoardLogger:
    """Writes a run's progress for TensorBoard.

    Args:
        log_dir: the event files' folder (``RUN/tensorboard`` by convention).
        purge_step: on a resumed run, the first global epoch trained again: TensorBoard drops what an earlier
            process wrote from there on, so the curves do not double back.

    Raises:
        UsageError: tensorboard is not installed.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard: optional, only with --tensorboard
        except ImportError:  # torch raises ImportError naming tensorboard when the package is missing
            raise UsageError("TensorBoard logging needs the tensorboard package: pip install "
                             "'headstart[tensorboard]' (or pip install tensorboard).") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._phase = None

    def on_epoch(self, record: dict) -> None:
        """One ``metrics.jsonl`` record: losses, accuracies, each layer group's learning rate (``lrs``: group ->
        rate; the head's ``lr`` when the record has only that), at step ``global_epoch``."""
        step = int(record["global_epoch"])
        for key, tag in SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        for group, rate in learning_rates(record).items():
            self.writer.add_scalar(f"lr/{group}", rate, step)
        if record.get("phase") != self._phase:
            self._phase = record.get("phase")
            self.writer.add_text("phase", f"epoch {step}: phase **{self._phase}** starts", step)
        self.writer.flush()

    def close(self, summary: dict | None = None, test_metrics: dict | None = None) -> None:
        """The final figures (test accuracy, calibration) and the confusion matrix of ``test_metrics`` (a
        ``classification_metrics`` dict) as an image; then the event file is closed."""
        summary = summary or {}
        step = int(summary.get("best_epoch") or 0)
        for key, tag in FINAL.items():
            value = summary.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        for split, cal in (summary.get("calibration") or {}).items():
            for key in ("ece_before", "ece_after"):
                if isinstance(cal.get(key), (int, float)) and math.isfinite(cal[key]):
                    self.writer.add_scalar(f"calibration/{split}_{key}", cal[key], step)
        if summary:
            lines = [f"| {k} | {summary[k]} |" for k in ("model", "strategy", "best_phase", "best_epoch", "test_acc",
                                                         "val_acc", "seconds") if k in summary]
            self.writer.add_text("summary", "| | |\n|---|---|\n" + "\n".join(lines), step)
        if test_metrics and test_metrics.get("confusion_matrix"):
            self.writer.add_image("test/confusion_matrix", _confusion_rgb(test_metrics), step, dataformats="HWC")
        self.writer.close()


def _confusion_rgb(metrics: dict):
    """The confusion matrix as ``headstart evaluate`` draws it, as an RGB array."""


    buf = io.BytesIO()
    plot_confusion(metrics, buf, title=f"test: accuracy {metrics['accuracy']:.3f} on {metrics['num_images']} images")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
