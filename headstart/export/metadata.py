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
``headstart.metrics``       the run's validation and test accuracy (JSON; for ``/info`` pages)
=========================== ============================================================================

The graph takes ``image`` (float32, N x 3 x crop x crop, preprocessed as the record says) and returns ``logits``
(raw) and ``probabilities`` = ``softmax(logits / temperature)``: the calibration is baked into the graph, so a
consumer that knows nothing of headstart gets the calibrated scores ``headstart predict`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from headstart.core.errors import WeightsError
from headstart.core.preprocessing import Preprocessing

INPUT = "image"
OUTPUTS = ("logits", "probabilities")
OUTPUTS_NOTE = "logits: raw; probabilities: softmax(logits / temperature), the run's calibrated scores"
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
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        return {PREFIX + "version": self.version, PREFIX + "model": self.model,
                PREFIX + "classes": json.dumps(self.classes),
                PREFIX + "preprocessing": json.dumps(self.preprocessing.describe()),
                PREFIX + "temperature": repr(float(self.temperature)), PREFIX + "outputs": OUTPUTS_NOTE,
                PREFIX + "quantization": self.quantization, PREFIX + "run": self.run,
                PREFIX + "metrics": json.dumps(self.metrics)}

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
            metrics = json.loads(props.get(PREFIX + "metrics") or "{}")
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{where} has damaged headstart metadata ({exc}); export it again.") from None
        if not isinstance(classes, list) or not classes:
            raise WeightsError(f"{where} has damaged headstart metadata (no class names); export it again.")
        return cls([str(c) for c in classes], pre, props.get(PREFIX + "model", ""),
                   props.get(PREFIX + "version", ""), temperature, props.get(PREFIX + "quantization", "none"),
                   props.get(PREFIX + "run", ""), metrics)

    def info(self) -> dict[str, Any]:
        """The record as plain JSON, for people and ``/info`` pages."""
        return {"model": self.model, "classes": self.classes, "num_classes": len(self.classes),
                "preprocessing": self.preprocessing.describe(), "temperature": self.temperature,
                "quantization": self.quantization, "headstart_version": self.version, "run": self.run,
                "metrics": self.metrics, "outputs": OUTPUTS_NOTE}
