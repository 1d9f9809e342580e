"""``export_run``: a run directory to one ONNX or ``torch.export`` file, checked against the run before it is kept.

The exported graph takes a preprocessed batch (any size) and returns ``logits`` and ``probabilities``, the softmax
of ``logits / temperature``: the run's calibration is baked into the graph, so every runtime gets the scores
``headstart predict`` prints (:mod:`headstart.predict.metadata` lists what the file carries besides).

Parity is the point of this module (STYLE.md: "an export gives the same outputs as eager mode"). Up to 256 of the
run's images (validation first, then test, then training; seeded synthetic images when none can be read) go through
the run (torch, fp32, CPU, as ``load_run`` runs it) and through the written file, fed the same tensors: every top-1
must agree (a disagreement is only allowed where the run's two best scores are within the tolerance of each other)
and no probability may differ by more than the tolerance (1e-4 by default; Lite0 at 224 px measured 1.4e-6).
Otherwise the file is deleted and :class:`~headstart.core.errors.ParityError` says by how much it failed. For ONNX
the same images also go through :class:`~headstart.predict.onnx.OnnxModel`'s own predict path, and the
the same tolerance holds for them (one preprocessing for every engine: the file's own path feeds it the run's
tensors).

``int8`` (ONNX Runtime's dynamic quantization: int8 weights, activations quantized per batch) changes the numbers
on purpose: the fp32 graph is checked as above first, then the int8 file's top-1 agreement with the run and its
accuracy change on the same images are measured and recorded, not held to the tolerance. For a convolutional
network it is a poor trade on CPUs without VNNI (``benchmarks/export_speed.py``, Lite0 on AVX2: 11x slower than fp32
ONNX Runtime, top-1 changed on 22% of the images): keep the fp32 file unless ``export.json`` says int8 is enough.

Every figure goes to ``export.json`` next to the file: one record per exported file name, so ``model.onnx`` and
``model.pt2`` exported into the same run keep theirs.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import headstart
from headstart.core.choices import EXPORT_FORMATS, QUANTIZATIONS
from headstart.core.errors import OutputError, ParityError, UsageError
from headstart.core.hashing import file_digest
from headstart.core.io import write_json
from headstart.core.onnx import export_onnx
from headstart.data.images import BadImageError, load_image
from headstart.data.rundir import RunDir, refuse_run_files
from headstart.data.transforms import eval_transform
from headstart.predict import run_decision
from headstart.predict.metadata import INPUT, OUTPUTS, PT2_EXTRA_FILE, ExportMetadata, headline_test_metrics
from headstart.predict.onnx import OnnxModel
from headstart.predict.run import LoadedRun, load_run, predict_probs, view_logits

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MAX_IMAGES = 256


class CalibratedModel(torch.nn.Module):
    """The run's model with its calibration: ``image -> (logits, softmax(logits / temperature))``; for a
    multi-label run (``temperatures``, one per label) ``image -> (logits, sigmoid(logits / temperatures))``."""

    def __init__(self, model: torch.nn.Module, temperature: float = 1.0, temperatures: list[float] | None = None):
        super().__init__()
        self.model, self.temperature = model, float(temperature)
        self.multilabel = temperatures is not None
        self.register_buffer("temperatures", torch.tensor(temperatures or [1.0], dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        if self.multilabel:
            return logits, torch.sigmoid(logits / self.temperatures)
        return logits, torch.softmax(logits / self.temperature, dim=-1)


def export_run(run: str | Path, format: str = "onnx", out: str | Path | None = None, quantize: str | None = None,
               max_images: int = DEFAULT_MAX_IMAGES, tolerance: float = DEFAULT_TOLERANCE,
               log=None) -> dict[str, Any]:
    """Exports a run's model to one file and checks it against the run; returns the record written to export.json.

    Args:
        run: a run directory made by ``headstart train``.
        format: ``onnx`` or ``pt2`` (:data:`headstart.core.choices.EXPORT_FORMATS`).
        out: the file to write (default ``RUN/model.onnx``, ``RUN/model.int8.onnx`` or ``RUN/model.pt2``).
        quantize: ``int8`` for ONNX Runtime's dynamic quantization (ONNX only).
        max_images: how many of the run's images the parity check uses.
        tolerance: the largest difference in any probability the fp32 export may show.
        log: called with a line saying what is being done, once the run is found (the CLI prints it).

    Raises:
        ParityError: the export does not give the run's outputs; nothing was written.
    """
    _check_options(format, out, quantize, max_images, tolerance)
    rd = RunDir(run).require_model()
    default = {"pt2": rd.PT2, "onnx": rd.ONNX_INT8 if quantize else rd.ONNX}[format]
    out = Path(out) if out is not None else rd / default
    _check_out(out)
    refuse_run_files([out, out.with_name(rd.EXPORT)], own=rd.path,
                     allowed=(rd.ONNX, rd.ONNX_INT8, rd.PT2, rd.EXPORT))
    if log is not None:
        log(f"exporting {rd.path} to {out} and checking it against the run on up to {max_images} of its images...")
    started = time.perf_counter()
    loaded = load_run(rd.path, device="cpu", precision="fp32")
    loaded.decision = run_decision(rd.path, loaded.classes)
    meta = _metadata(loaded, rd, quantize)
    samples, origin = _parity_samples(rd, max_images)
    partial = out.with_name(f".{out.name}.partial")
    try:
        check = _write_and_check(loaded, meta, format, quantize, samples, partial)
        if check.pop("synthetic"):
            origin = {"synthetic": check["images"]}
            if log is not None:
                log(f"none of the run's {len(samples)} images could be read (moved?): checked on {check['images']} "
                    "synthetic images instead, without accuracy.")
        check = _judge(check, tolerance, quantize)
        os.replace(partial, out)
    finally:
        for leftover in (partial, partial.with_name(partial.name + ".fp32")):
            leftover.unlink(missing_ok=True)
    record = {"format": format, "file": str(out.resolve()), "bytes": out.stat().st_size,
              "sha256": file_digest(out, "sha256"),
              "quantization": meta.quantization, "run": str(rd.path.resolve()), "model": meta.model,
              "classes": len(meta.classes), "temperature": meta.temperature,
              "temperature_in_graph": True, "images_from": origin, **check,
              "seconds": round(time.perf_counter() - started, 2), "created": datetime.now(UTC).isoformat(),
              "versions": _versions(format)}
    _write_record(out, record)
    return record


def _check_options(format: str, out: str | Path | None, quantize: str | None, max_images: int,
                   tolerance: float) -> None:
    """Every option checked before the run is loaded: one sentence each."""
    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format '{format}'; use one of {', '.join(EXPORT_FORMATS)}.")
    if quantize is not None and (quantize not in QUANTIZATIONS or format != "onnx"):
        raise UsageError(f"quantization '{quantize}' is not available for {format}; the one there is: "
                         f"{', '.join(QUANTIZATIONS)}, with onnx.")
    if format == "onnx" and (missing := [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]):
        raise UsageError(f"exporting to ONNX needs {', '.join(missing)}: pip install 'headstart[export]'.")
    if max_images < 1 or not 0 < tolerance < 1:
        raise UsageError(f"the parity check needs at least one image and a tolerance in (0, 1), got {max_images} "
                         f"and {tolerance}.")
    if out is not None and Path(out).suffix != f".{format}":
        raise UsageError(f"the output file {out} should end in .{format}, as the format says.")


def _write_and_check(loaded: LoadedRun, meta: ExportMetadata, format: str, quantize: str | None,
                     samples: list[tuple[str, int]], partial: Path) -> dict[str, Any]:
    """Writes the file to ``partial`` (the int8 one there, the fp32 graph beside it, when quantizing) and returns
    the parity figures of it against the run on ``samples``."""
    module = CalibratedModel(copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format),
                             loaded.temperature, loaded.decision.temperatures if loaded.decision else None).eval()
    example = torch.zeros(2, 3, loaded.preprocessing.crop, loaded.preprocessing.crop)
    if format == "pt2":
        _save_pt2(module, example, partial, meta)
        return _parity(loaded, samples, {"pt2": _pt2_probabilities(partial)}, own_path=None)
    fp32 = partial.with_name(partial.name + ".fp32") if quantize else partial
    _save_onnx(module, example, fp32, meta)
    if quantize:
        _quantize_int8(fp32, partial)
    return _parity(loaded, samples, _onnx_candidates(fp32, partial if quantize else None), own_path=partial)


# -- writing -------------------------------------------------------------------------------------------------------

def _check_out(out: Path) -> None:
    if out.is_dir():
        raise OutputError(f"{out} is a folder; pass the file to write, e.g. {out / ('model' + out.suffix)}.")
    if not out.parent.is_dir():
        raise OutputError(f"the folder {out.parent} does not exist; create it or pass another file to write.")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"cannot write to {out.parent}; pass a file in a folder you can write to.")


def _metadata(loaded: LoadedRun, rd: RunDir, quantize: str | None) -> ExportMetadata:
    summary = rd.summary()
    return ExportMetadata(list(loaded.classes), loaded.preprocessing, loaded.config.get("model", ""),
                          headstart.__version__, float(loaded.temperature), "int8-dynamic" if quantize else "none",
                          str(rd.path.resolve()), summary.get("strategy", loaded.config.get("strategy", "")),
                          headline_test_metrics(rd.read_json(rd.TEST_METRICS), summary),
                          loaded.decision.to_dict() if loaded.decision else None)


def _save_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, meta: ExportMetadata) -> None:
    """The dynamo exporter (:func:`headstart.core.onnx.export_onnx`), batch dynamic, metadata in the file."""
    export_onnx(module, example, INPUT, OUTPUTS, meta.to_props(), path)


def _quantize_int8(fp32: Path, out: Path) -> None:
    """ONNX Runtime's dynamic quantization (int8 weights; activations quantized per batch); metadata kept."""
    import onnx  # the export extra: only ONNX exports need it
    from onnxruntime.quantization import QuantType, quantize_dynamic  # the export extra: only --quantize needs it

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props})
    props["headstart.quantization"] = "int8-dynamic"
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(out))


def _save_pt2(module: torch.nn.Module, example: torch.Tensor, path: Path, meta: ExportMetadata) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(program, str(path), extra_files={PT2_EXTRA_FILE: json.dumps(meta.to_props())})


def load_pt2(path: str | Path) -> tuple[torch.export.ExportedProgram, ExportMetadata]:
    """A ``.pt2`` written by :func:`export_run` and its metadata. ``program.module()(batch)`` returns
    ``(logits, probabilities)`` for a preprocessed float32 batch."""
    extra = {PT2_EXTRA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    props = json.loads(extra[PT2_EXTRA_FILE]) if extra[PT2_EXTRA_FILE] else {}
    return program, ExportMetadata.from_props(props, str(path))


def _write_record(out: Path, record: dict[str, Any]) -> None:
    """``export.json`` beside ``out``: one record per file name; records of files no longer there are dropped."""
    path = out.parent / RunDir.EXPORT
    try:
        records = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        records = {}
    records = {name: r for name, r in records.items() if isinstance(r, dict) and (out.parent / name).is_file()}
    records[out.name] = record
    write_json(path, records)


def _versions(format: str) -> dict[str, str]:
    versions = {"headstart": headstart.__version__, "torch": torch.__version__, "python": platform.python_version()}
    if format == "onnx":
        import onnx  # the export extra: only ONNX exports need it
        import onnxruntime  # the export extra: only ONNX exports need it
        import onnxscript  # the export extra: only ONNX exports need it

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__, onnxscript=onnxscript.__version__)
    return versions


# -- checking ------------------------------------------------------------------------------------------------------

def _parity_samples(rd: RunDir, max_images: int) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Up to ``max_images`` of the run's images, validation first; ``{split: count}`` says where they came from."""
    splits = rd.split()
    chosen, origin = [], {}
    for name in ("val", "test", "train"):
        take = getattr(splits, name)[: max_images - len(chosen)]
        chosen += take
        if take:
            origin[name] = len(take)
    return chosen, origin


def _onnx_candidates(fp32: Path, int8: Path | None) -> dict:

    models = {"onnx": OnnxModel(fp32)} | ({"int8": OnnxModel(int8)} if int8 else {})
    return {name: m.graph_probabilities for name, m in models.items()}


def _pt2_probabilities(path: Path):
    program, _ = load_pt2(path)  # read back from the file: the check covers saving and loading too
    module = program.module()

    @torch.no_grad()
    def probabilities(batch: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(batch))[1].numpy()

    return probabilities


def _parity(loaded: LoadedRun, samples: list[tuple[str, int]], candidates: dict, own_path: Path | None,
            batch_size: int = 32) -> dict[str, Any]:
    """Probabilities of the run and of each candidate (fed the run's own tensors) on the same images; with ``own_path``
    (an ONNX file) also that file through :class:`OnnxModel`'s own predict path (the run's eval transform). When
    none of the run's images can be read (the data moved), seeded synthetic images stand in: the conversion is still
    checked, accuracy is not."""

    transform, pre = eval_transform(loaded.preprocessing), loaded.preprocessing
    std = np.asarray(pre.std, np.float32)[:, None, None]
    onnx_model = OnnxModel(own_path) if own_path is not None else None
    run, labels = [], []
    outputs = {name: [] for name in candidates} | ({"predict_path": []} if own_path is not None else {})
    input_diff = 0.0

    def feed(images: list, ys: list) -> None:
        nonlocal input_diff
        x = torch.stack([transform(im) for im in images])
        if loaded.decision is None:
            run.append(predict_probs(loaded.model, x, loaded.runtime, temperature=loaded.temperature).numpy())
        else:
            run.append(loaded.scores(view_logits(loaded.model, x, loaded.runtime).numpy()).astype(np.float32))
        labels.extend(ys)
        batch = x.numpy()
        for name, probabilities in candidates.items():
            outputs[name].append(probabilities(batch))
        if onnx_model is not None:
            mine = [onnx_model.prepare(im) for im in images]  # the file's own predict path, end to end
            input_diff = max(input_diff, float((np.abs(np.stack(mine) - batch) * std).max() * 255))
            outputs["predict_path"].append(onnx_model.probabilities(mine))

    unreadable = 0
    for start in range(0, len(samples), batch_size):
        images, ys = [], []
        for path, y in samples[start:start + batch_size]:
            try:
                images.append(load_image(path))
                ys.append(y)
            except BadImageError:
                unreadable += 1
        if images:
            feed(images, ys)
    synthetic = not run
    if synthetic:
        images = _synthetic_images(min(len(samples) or 64, 64), pre.resize)
        for start in range(0, len(images), batch_size):
            feed(images[start:start + batch_size], [None] * len(images[start:start + batch_size]))
    ref = np.concatenate(run)
    y = None if synthetic else np.asarray(labels)
    figures = {name: _compare(ref, np.concatenate(probs), y, loaded.decision) for name, probs in outputs.items()}
    if "predict_path" in figures:
        figures["predict_path"]["max_input_diff_levels"] = round(input_diff, 3)
    return {"images": len(ref), "unreadable": unreadable, "synthetic": synthetic, "figures": figures}


def _synthetic_images(n: int, size: int, seed: int = 0) -> list:
    """Smooth random colour fields with noise, a little larger than ``size`` and not square (the resize is used)."""

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (size + 29, size + 13), Image.Resampling.BICUBIC)
        noisy = np.asarray(field, np.float64) + rng.normal(0, 12, (size + 13, size + 29, 3))
        out.append(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))
    return out


def _compare(ref: np.ndarray, probs: np.ndarray, labels: np.ndarray | None, decision=None) -> dict[str, Any]:
    if decision is not None:  # multi-label: the label sets given, and the exact-match ratio
        return _compare_label_sets(ref, probs, labels, decision)
    top_ref, top = ref.argmax(1), probs.argmax(1)
    best2 = np.sort(ref, axis=1)[:, -2:]
    differ = top_ref != top
    figures = {"top1_agreement": round(float(1 - differ.mean()), 6), "top1_disagreements": int(differ.sum()),
               # the largest gap between the run's two best scores where the top-1 changed: within the tolerance, a tie
               "widest_margin_where_top1_differs": float((best2[:, 1] - best2[:, 0])[differ].max()) if differ.any()
               else None,
               "max_prob_diff": float(np.abs(ref - probs).max()), "mean_prob_diff": float(np.abs(ref - probs).mean())}
    if labels is not None:
        figures.update(accuracy_run=round(float((top_ref == labels).mean()), 6),
                       accuracy_exported=round(float((top == labels).mean()), 6),
                       accuracy_change=round(float((top == labels).mean() - (top_ref == labels).mean()), 6))
    return figures


def _compare_label_sets(ref: np.ndarray, probs: np.ndarray, labels: np.ndarray | None, decision) -> dict[str, Any]:
    """A multi-label export against its run: the label sets given, and where they differ whether the score was
    within the tolerance of its threshold (a tie). Reported under the single-label keys ``_judge`` reads."""
    given_ref, given = decision.given(ref), decision.given(probs)
    differ = (given_ref != given).any(1)
    gap = np.abs(ref - np.asarray(decision.thresholds))[given_ref != given]
    agreement = round(float(1 - differ.mean()), 6)
    figures = {"label_set_agreement": agreement, "top1_agreement": agreement, "top1_disagreements": int(differ.sum()),
               "widest_margin_where_top1_differs": float(gap.max()) if gap.size else None,
               "max_prob_diff": float(np.abs(ref - probs).max()), "mean_prob_diff": float(np.abs(ref - probs).mean())}
    if labels is not None:
        figures.update(exact_match_run=round(float((given_ref == labels).all(1).mean()), 6),
                       exact_match_exported=round(float((given == labels).all(1).mean()), 6))
    return figures


def _judge(check: dict[str, Any], tolerance: float, quantize: str | None) -> dict[str, Any]:
    """The figures as export.json records them; raises :class:`ParityError` when the fp32 graph fails."""
    figures = check.pop("figures")
    strict_name = next(n for n in ("onnx", "pt2") if n in figures)
    strict = figures.pop(strict_name)
    margin = strict["widest_margin_where_top1_differs"]
    ties_only = margin is None or margin <= tolerance
    passed = strict["max_prob_diff"] <= tolerance and ties_only
    own = figures.get("predict_path")  # the file through `headstart predict MODEL.onnx`'s own path, images decoded anew
    if own is not None and not quantize:
        passed = passed and own["max_prob_diff"] <= tolerance and (own["widest_margin_where_top1_differs"] or 0) \
            <= tolerance
        strict = strict if strict["max_prob_diff"] >= own["max_prob_diff"] else own
    if not passed:
        raise ParityError(f"the exported model does not give the run's outputs on {check['images']} images: "
                          f"max probability difference {strict['max_prob_diff']:.2g} (tolerance {tolerance:g}), "
                          f"{strict['top1_disagreements']} different top-1; nothing was written.")
    record = {**check, "reference": "the run in torch, fp32, CPU; both fed torchvision's eval transform",
              "tolerance": tolerance, "parity": {**strict, "passed": True}}
    if quantize:
        record["fp32_parity"] = record.pop("parity")
        record["parity"] = {**figures.pop("int8"), "enforced": False,
                            "note": "int8 changes the numbers: agreement and accuracy change are measured, the "
                                    "tolerance applies to the fp32 graph (fp32_parity)"}
    if "predict_path" in figures:
        record["predict_path"] = {**figures.pop("predict_path"), "enforced": not quantize,
                                  "note": "this file through `headstart predict`'s own path (the run's eval "
                                          "transform, images decoded again) against the run"}
    return record
