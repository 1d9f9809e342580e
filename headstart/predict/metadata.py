"""What an exported model carries so that the file alone is enough to predict: one record, stored as strings.

ONNX keeps it in the model's ``metadata_props`` (string keys and values: any ONNX runtime can read them); ``pt2``
keeps the same strings in ``torch.export.save``'s ``extra_files`` as ``headstart.json``. Lists and dicts are JSON.

=========================== ============================================================================
``headstart.version``       headstart's version that exported it
``headstart.model``         the backbone's name (``efficientnet_lite0``)
``headstart.classes``       class names, in the order of the outputs (JSON list)
``headstart.preprocessing`` :meth:`Preprocessing.describe`: image_size, resize, crop, interpolation, mean, std,
                            crop_pct (JSON)
``headstart.temperature``   the run's calibration temperature, already applied to ``probabilities``
``headstart.outputs``       what the two outputs are (one sentence)
``headstart.quantization``  ``none`` or ``int8-dynamic``
``headstart.run``           the run directory it came from (for the record; not read back)
``headstart.strategy``      how the run was trained (``linear-probe``, ``fine-tune``...)
``headstart.test_metrics``  the run's test figures (:func:`headline_test_metrics`; JSON, ``null`` without a test
                            split)
``headstart.task``          ``multilabel`` for a multi-label run (absent for single-label ones)
``headstart.decision``      multi-label only: ``{"task", "temperatures", "thresholds"}``, one of each per label
                            (JSON); ``probabilities`` is then sigmoid(logits / temperature) per label, and a label
                            is given when it reaches its threshold
=========================== ============================================================================

The graph takes ``image`` (float32, N x 3 x crop x crop, preprocessed as the record says) and returns ``logits``
(raw) and ``probabilities`` = ``softmax(logits / temperature)``: the calibration is baked into the graph, so a
consumer that knows nothing of headstart gets the calibrated scores ``headstart predict`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from headstart.core.errors import WeightsError
from headstart.core.preprocessing import Preprocessing

INPUT = "image"
OUTPUTS = ("logits", "probabilities")
OUTPUTS_NOTE = "logits: raw; probabilities: softmax(logits / temperature), the run's calibrated scores"
OUTPUTS_NOTE_MULTILABEL = ("logits: raw; probabilities: sigmoid(logits / temperature) per label, the run's calibrated "
                           "scores; a label is given when its score reaches its threshold (headstart.decision)")
PT2_EXTRA_FILE = "headstart.json"
PREFIX = "headstart."


@dataclass(frozen=True)
class ExportMetadata:
    """The record an exported model carries. ``to_props`` / ``from_props`` give its stored form."""

    classes: list[str]
    preprocessing: Preprocessing
    model: str
    version: str
    temperature: float = 1.0
    quantization: str = "none"
    run: str = ""
    strategy: str = ""
    test_metrics: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None  # a multi-label run's (headstart.predict.multilabel.Decision.to_dict)

    def to_props(self) -> dict[str, str]:
        return {PREFIX + "version": self.version, PREFIX + "model": self.model,
                PREFIX + "classes": json.dumps(self.classes),
                PREFIX + "preprocessing": json.dumps(self.preprocessing.describe()),
                PREFIX + "temperature": repr(float(self.temperature)), PREFIX + "outputs": OUTPUTS_NOTE,
                PREFIX + "quantization": self.quantization, PREFIX + "run": self.run,
                PREFIX + "strategy": self.strategy, PREFIX + "test_metrics": json.dumps(self.test_metrics),
                **({PREFIX + "task": "multilabel", PREFIX + "decision": json.dumps(self.decision),
                    PREFIX + "outputs": OUTPUTS_NOTE_MULTILABEL} if self.decision else {})}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> ExportMetadata:
        """The record from stored strings; ``where`` (the file) is named in the error when it is not headstart's."""
        missing = [k for k in ("classes", "preprocessing") if PREFIX + k not in props]
        if missing:
            raise WeightsError(f"{where} has no headstart metadata (no {PREFIX}{missing[0]}); predict needs a model "
                               "exported by `headstart export`, which stores the classes and the preprocessing.")
        try:
            classes = json.loads(props[PREFIX + "classes"])
            pre = Preprocessing.of(json.loads(props[PREFIX + "preprocessing"]))
            temperature = float(props.get(PREFIX + "temperature", "1"))
            test_metrics = json.loads(props.get(PREFIX + "test_metrics") or "null")
            decision = json.loads(props.get(PREFIX + "decision") or "null")
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{where} has damaged headstart metadata ({exc}); export it again.") from None
        if not isinstance(classes, list) or not classes:
            raise WeightsError(f"{where} has damaged headstart metadata (no class names); export it again.")
        return cls([str(c) for c in classes], pre, props.get(PREFIX + "model", ""),
                   props.get(PREFIX + "version", ""), temperature, props.get(PREFIX + "quantization", "none"),
                   props.get(PREFIX + "run", ""), props.get(PREFIX + "strategy", ""), test_metrics, decision)

    def info(self) -> dict[str, Any]:
        """The record as plain JSON, with the keys a run's ``/info`` has (``model``, ``strategy``, ``classes``,
        ``preprocessing``, ``temperature``, ``test_metrics``) and the export's own."""
        return {"model": self.model, "strategy": self.strategy, "classes": self.classes,
                "preprocessing": self.preprocessing.describe(), "temperature": self.temperature,
                "test_metrics": self.test_metrics, "quantization": self.quantization,
                "headstart_version": self.version, "run": self.run,
                "outputs": OUTPUTS_NOTE_MULTILABEL if self.decision else OUTPUTS_NOTE,
                **({"task": "multilabel", "thresholds": self.decision["thresholds"]} if self.decision else {})}


def headline_test_metrics(metrics: dict | None, summary: dict) -> dict | None:
    """The headline figures of a run's ``test_metrics.json`` (the confusion matrix and calibration curves stay in
    the run); runs without it fall back to ``summary.json``; runs without a test split have none."""
    if metrics:
        keep = ("accuracy", "balanced_accuracy", "map", "map_micro", "exact_match", "hamming_loss", "num_images",
                "per_class")
        out = {k: metrics[k] for k in keep if k in metrics}
        if (ece := (metrics.get("calibration") or {}).get("ece_after")) is not None:
            out["ece"] = ece
        return out
    if "test_acc" in summary:
        return {"accuracy": summary["test_acc"], "balanced_accuracy": summary.get("test_balanced_acc")}
    return None
