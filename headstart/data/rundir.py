"""A run directory: the one place that knows its file names and how each is read and written.

``headstart train`` writes a run; ``predict``, ``evaluate``, ``adapt``, ``export``, ``serve`` and ``report`` read
it and need nothing else. Every file is written atomically (:mod:`headstart.core.io`) with ordinary permissions.

=========================== ==========================================================================
``config.yaml``             every setting, resolved (strategy, phases, preprocessing, weights' source)
``classes.json``            class names, in the order of the model's outputs
``split.json``              which image went where (absolute paths)
``skipped.json``            files left out, and why
``leakage.json``            duplicate groups and the val/test images left out because they copy a train image
``train_fingerprints.json`` hashes and thumbnails of the train and val images, and which of them the shipped weights
                            were fitted on (train; val too after a refit): ``evaluate`` leaves out copies of those
``metrics.jsonl``           one line per epoch
``best.safetensors``        the shipped weights (lowest calibrated validation loss), metadata in the header
``phase_best.safetensors``  the current phase's best weights (for resuming, and when an earlier phase won)
``last.pt``                 the training state, for ``--resume``
``summary.json``            what was shipped and why, test accuracy, calibration, time
``test_metrics.json``       per-class figures on the test split
``evaluation.json``         the last ``headstart evaluate`` (with ``confusion_matrix.png``)
``adapt.json``              what ``headstart adapt`` changed (adapted runs only)
``report.html``             ``headstart report``: the run on one self-contained page
``tensorboard/``            TensorBoard's event files (``train --tensorboard``)
``model.onnx``, ``.pt2``    ``headstart export``'s files (``model.int8.onnx`` quantized), ``export.json`` their parity
=========================== ==========================================================================
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from headstart.core.errors import OutputError, RunNotFoundError
from headstart.core.io import (
    load_state,
    load_weights,
    read_jsonl,
    save_state,
    save_weights,
    weights_metadata,
    write_json,
    write_text,
    write_yaml,
)
from headstart.data.multilabel import TASK as MULTILABEL
from headstart.data.multilabel import MultiLabelSplits
from headstart.data.sources import DataSplits

# What ``headstart compare`` writes into its folder: the results (resumable: finished runs are kept), the table,
# the two plots. ``compare`` writes them and ``report`` reads them.
COMPARE_RESULTS = "compare.json"
COMPARE_TABLE = "compare.md"
COMPARE_PLOTS = ("accuracy_vs_labels.png", "accuracy_vs_time.png")


@dataclass(frozen=True)
class CompareMeasure:
    """What a ``compare`` folder varies and scores, by task: the keys of its records and the words for them."""

    budget: str  # the budget's key in every record
    budget_head: str  # its table header
    budget_unit: str  # after a number: "5 labels", "100 images"
    axis: str  # the plot's x axis
    score: str  # the headline test figure's key
    score_head: str
    name: str  # the headline figure in a sentence, and on the plots' y axis
    second: str  # the second test figure's key
    second_head: str
    val: str  # the validation figure of each learning-rate candidate
    val_head: str
    plots: tuple[str, str]  # file names: score against the budget, and against wall time
    spread: tuple[str, ...] = ()  # figures besides the headline shown with their spread over seeds in the tables


# By the task a run's config records: None (single-label) or "multilabel".
COMPARE_MEASURES: dict[str | None, CompareMeasure] = {
    None: CompareMeasure("labels_per_class", "labels/class", "labels", "labelled training images per class",
                             "test_acc", "test acc", "accuracy", "test_balanced_acc", "balanced acc", "val_acc",
                             "val acc", COMPARE_PLOTS),
    MULTILABEL: CompareMeasure("train_images", "train images", "images", "labelled training images",
                               "test_map", "test mAP", "mAP", "test_exact_match", "exact match", "val_map", "val mAP",
                               ("map_vs_train_images.png", "map_vs_time.png"), ("test_exact_match", "seconds")),
}

class RunDir:
    """The files of one run. ``RunDir(path).summary()`` reads, ``.write_summary(...)`` writes."""

    CONFIG = "config.yaml"
    CLASSES = "classes.json"
    SPLIT = "split.json"
    SKIPPED = "skipped.json"
    LEAKAGE = "leakage.json"
    FINGERPRINTS = "train_fingerprints.json"
    METRICS = "metrics.jsonl"
    BEST = "best.safetensors"
    PHASE_BEST = "phase_best.safetensors"
    LAST = "last.pt"
    SUMMARY = "summary.json"
    TEST_METRICS = "test_metrics.json"
    EVALUATION = "evaluation.json"
    CONFUSION = "confusion_matrix.png"
    ADAPT = "adapt.json"
    LR_FIND = "lr_find.json"
    LR_FIND_PLOT = "lr_find.png"
    REPORT = "report.html"
    TENSORBOARD = "tensorboard"  # a folder: TensorBoard's event files (``train --tensorboard``)
    HEATMAPS = "heatmaps"  # a folder: the report's Grad-CAM overlays, kept so a page drawn again needs no torch
    ONNX = "model.onnx"
    ONNX_INT8 = "model.int8.onnx"
    PT2 = "model.pt2"
    EXPORT = "export.json"
    BACKBONE_CHOICE = "backbone_choice.json"  # train --choose: every candidate's evidence and the winner
    CURVES = "training_curves.png"  # drawn by the report from metrics.jsonl; drawn again when that is newer
    RELIABILITY = "reliability.png"  # drawn by the report from the calibration it shows; again when that changes
    LABEL_ISSUES = "label_issues.csv"  # check --labels --run RUN: the labels that look wrong, shown by the report
    LABEL_ISSUES_PAGE = "label_issues.html"
    # Everything a run of headstart writes here; --overwrite removes these (and only these) first.
    OWNED = (CONFIG, CLASSES, SPLIT, SKIPPED, LEAKAGE, FINGERPRINTS, METRICS, BEST, PHASE_BEST, LAST, SUMMARY,
             TEST_METRICS, EVALUATION, CONFUSION, ADAPT, LR_FIND, LR_FIND_PLOT, REPORT, TENSORBOARD, ONNX, ONNX_INT8,
             PT2, EXPORT, CURVES, RELIABILITY, BACKBONE_CHOICE, LABEL_ISSUES, LABEL_ISSUES_PAGE, HEATMAPS)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- what is there -------------------------------------------------------------------------------------------

    def is_run(self) -> bool:
        return (self.path / self.CONFIG).is_file()

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def require_model(self) -> RunDir:
        """This run, checked to hold a model; otherwise an error that says what the folder is."""
        if not self.path.is_dir():
            what = "it is a file, not a folder" if self.path.exists() else "it does not exist"
            raise RunNotFoundError(f"{self.path} is not a headstart run directory ({what}); pass the --out "
                                   "folder of a `headstart train` run.")
        if not self.is_run():
            raise RunNotFoundError(f"{self.path} is not a headstart run directory (no {self.CONFIG}); pass the "
                                   "--out folder of a `headstart train` run.")
        if not self.has(self.BEST):
            raise RunNotFoundError(f"{self.path} has no {self.BEST}: its training did not finish an epoch; "
                                   f"continue it with `headstart train --resume {self.path}`.")
        return self

    def prepare(self, overwrite: bool, *, inside: Path | None = None, what: str = "--out",
                dry_run: bool = False) -> RunDir:
        """Makes the folder ready for a new run: created if missing, checked writable, and with ``overwrite`` the
        previous run's files removed (all of them: no stale ``test_metrics.json`` beside a new model).

        Refuses a folder that holds a run (without ``overwrite``), a non-empty folder that is not a run (its files
        are the user's), and a folder inside ``inside`` (the data folder: the run would become training data).
        With ``dry_run`` it only checks, and creates or removes nothing.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise OutputError(f"{what} {out} is a file; pass a folder for the run.")
        if inside is not None and inside.is_dir() and _within(out, inside):
            raise OutputError(f"{what} {out} is inside the data folder {inside}; its files would be read as "
                              "images next time. Pass a folder outside it.")
        if self.is_run():
            if not overwrite:
                raise OutputError(f"{out} already holds a run; pass another {what}, or --overwrite to replace it.")
        elif out.is_dir() and (foreign := [p.name for p in out.iterdir()
                                           if p.name not in self.OWNED and not p.name.startswith(".")]):
            raise OutputError(f"{out} holds files that are not a headstart run ({', '.join(sorted(foreign)[:3])}"
                              f"{'...' if len(foreign) > 3 else ''}); pass a new or empty folder as {what} "
                              "(--overwrite only replaces a previous run).")
        if dry_run:
            return self
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"cannot write to {out} ({exc.strerror}); pass a {what} folder you can write to.") \
                from None
        for name in self.OWNED:
            if (out / name).is_dir() and not (out / name).is_symlink():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
        return self

    # -- settings and data ---------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / self.CONFIG).read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        write_yaml(self.path / self.CONFIG, config)

    def classes(self) -> list[str]:
        return json.loads((self.path / self.CLASSES).read_text())

    def write_classes(self, classes: list[str]) -> None:
        write_json(self.path / self.CLASSES, classes)

    def split(self) -> DataSplits:
        """Which image went where, every path absolute. Runs since split.json stored absolute paths read as they
        are; older runs hold paths relative to the folder ``train`` ran in, looked for from the folders
        :meth:`_split_bases` lists, so they resolve from any current folder while the run and its data stay where
        they were (or move together). Paths that cannot be found stay as they were (and fail when read)."""
        if not self.has(self.SPLIT):
            raise RunNotFoundError(f"{self.path} has no {self.SPLIT}; it is not a complete run directory.")
        record = json.loads((self.path / self.SPLIT).read_text())
        if record.get("task") == MULTILABEL:  # written with absolute paths from the start
            return MultiLabelSplits.from_json(record)
        splits = DataSplits.from_json(record)
        relative = [p for name in ("train", "val", "test") for p, _ in getattr(splits, name)
                    if not Path(p).is_absolute()]
        if not relative:
            return splits
        probe = relative[:: max(1, len(relative) // 20)]
        base = next((b for b in self._split_bases() if any((b / p).is_file() for p in probe)), None)
        if base is None:
            return splits

        def absolute(samples):
            return [(str(base / p) if not Path(p).is_absolute() else p, y) for p, y in samples]

        return replace(splits, train=absolute(splits.train), val=absolute(splits.val), test=absolute(splits.test))

    def _split_bases(self) -> list[Path]:
        """Folders that relative ``split.json`` paths may be relative to, most likely first: the current folder, the
        folder ``train`` ran in (the run's location less the config's ``out``), folders above the run that hold the
        config's ``data``, and the data folder itself and its parent (for a CSV manifest, the CSV's folder)."""
        config = self.config() if self.is_run() else {}
        bases = [Path.cwd()]
        runs = [self.path.resolve()] + ([Path(config["adapted"]["from_run"])] if config.get("adapted") else [])
        if config.get("out") and not Path(config["out"]).is_absolute():
            bases += [a for run in runs for a in run.parents if (a / config["out"]).resolve() == run]
        if config.get("data"):
            data = Path(config["data"])
            if not data.is_absolute():
                bases += [a for run in runs for a in run.parents if (a / data).exists()]
            if (found := next((b / data for b in bases if (b / data).exists()), None)) is not None:
                folder = found.resolve() if found.is_dir() else found.resolve().parent
                bases += [folder, folder.parent]
        return list(dict.fromkeys(bases))

    def write_split(self, splits: DataSplits) -> None:
        write_json(self.path / self.SPLIT, splits.to_json())

    def skipped(self) -> list[tuple[str, str]]:
        if not self.has(self.SKIPPED):
            return []
        return [(s["path"], s["reason"]) for s in json.loads((self.path / self.SKIPPED).read_text())]

    def write_skipped(self, bad: list[tuple[str, str]]) -> None:
        write_json(self.path / self.SKIPPED, [{"path": p, "reason": r} for p, r in bad])

    def fitted_fingerprints(self) -> dict[str, dict] | None:
        """Fingerprints of the images whose labels the shipped weights were fitted on (``fitted_on``), by path;
        None for runs from before fingerprints were kept. Runs that kept a flat ``{path: record}`` of training
        images read as that."""
        recorded = self.read_json(self.FINGERPRINTS)
        if recorded is None or "images" not in recorded:
            return recorded
        # leakage.json says it after a refit; runs from before said it in this file
        fitted = set((self.read_json(self.LEAKAGE) or {}).get("fitted_on") or recorded.get("fitted_on", ["train"]))
        return {p: r for p, r in recorded["images"].items() if r.get("split", "train") in fitted}

    def read_json(self, name: str, default: Any = None) -> Any:
        """A JSON file of the run (``summary.json``, ``leakage.json``...), or ``default`` when it is absent."""
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else default

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.path / name, text)

    def summary(self) -> dict[str, Any]:
        return self.read_json(self.SUMMARY, {})

    # -- training progress ---------------------------------------------------------------------------------------

    def metrics(self) -> list[dict[str, Any]]:
        """The epochs recorded so far; a torn last line (the process died while writing it) is left out."""
        return read_jsonl(self.path / self.METRICS)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / self.METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def keep_metrics_until(self, global_epoch: int) -> None:
        """Drops the lines of epochs after ``global_epoch`` (lost with a crash: they are trained again)."""
        kept = [r for r in self.metrics() if r["global_epoch"] <= global_epoch]
        write_text(self.path / self.METRICS, "".join(json.dumps(r) + "\n" for r in kept))

    def save_weights(self, name: str, model, metadata: dict | None = None) -> None:
        save_weights(self.path / name, model, metadata)

    def weights(self, name: str = BEST) -> dict:
        return load_weights(self.path / name)

    def weights_metadata(self, name: str = BEST) -> dict:
        return weights_metadata(self.path / name)

    def save_state(self, state: dict) -> None:
        save_state(self.path / self.LAST, state)

    def resume_state(self) -> dict:
        """``last.pt`` plus the current phase's best weights, to continue a run where it stopped."""
        if not self.has(self.LAST):
            raise RunNotFoundError(f"{self.path} has no {self.LAST} to resume from; start it again without --resume.")
        state = load_state(self.path / self.LAST)
        if self.has(self.PHASE_BEST):
            state["phase_best_state"] = load_weights(self.path / self.PHASE_BEST)
        return state


def refuse_run_files(targets, own: str | Path | None = None, allowed=()) -> None:
    """Refuses to write any of ``targets`` where a run keeps one of its files (:attr:`RunDir.OWNED`, or anything
    inside its owned folders), so that no output replaces a run's weights or records: only the names in ``allowed``,
    in the run ``own`` (the command's own run), may be written there (``report.html`` for ``report``).

    Raises:
        OutputError: the first target that would replace a run's file, with the run it belongs to.
    """
    own_dir = Path(own).resolve() if own is not None else None
    for target in map(Path, targets):
        resolved = target.resolve()  # a symlink into a run is the run's file
        for here in (resolved, *resolved.parents):
            if here.name not in RunDir.OWNED or not RunDir(here.parent).is_run():
                continue
            if here == resolved and here.parent == own_dir and here.name in allowed:
                break
            whose = "this run's" if here.parent == own_dir else f"the run {here.parent}'s"
            raise OutputError(f"{target} would replace {whose} own {here.name}; nothing is written over a run's "
                              "files: pass a file outside the run, or another name.")


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def shipped_backbone_is_frozen(config: dict, summary: dict) -> bool:
    """Whether the shipped weights come from a phase that fitted only the head on frozen features (a linear probe,
    or the head phase of a recipe when it won), and nothing adapted the backbone since: then ``evaluate`` and
    ``predict`` take the features from the cache ``train`` filled. Adapted runs and runs without a summary: no."""
    if config.get("adapted") or not summary.get("best_phase"):
        return False
    phase = next((p for p in config.get("strategy_phases") or [] if p.get("name") == summary["best_phase"]), None)
    return phase is not None and phase.get("fit") == "features" and phase.get("bn") != "adabn"
