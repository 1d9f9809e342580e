"""AdaBN: BatchNorm statistics recomputed on images of the target domain, without labels or gradients.

A network's BatchNorm layers normalise with a mean and variance per channel. When the images it meets later differ
in a systematic way (another scanner, camera, lighting, stain, season), the activations they produce are shifted
and scaled differently, and accuracy drops even though the features are still useful. Li et al. 2016 ("Revisiting
Batch Normalization for Practical Domain Adaptation") replace the statistics by the target domain's own: forward
passes over unlabelled target images, nothing else changes. Use ``headstart adapt RUN TARGET_DIR --out RUN2`` when
a trained model is deployed on images that look different from its training images and a few hundred of them
(unlabelled) are at hand; evaluate both runs on labelled target images if there are any. Models without BatchNorm
(ViTs, ConvNeXt's LayerNorm) have nothing to adapt.

Two methods:

- ``classic`` (Li et al.): each layer's statistics become the target's. This assumes the model's statistics are
  those of its training images, so that target features normalised by target statistics look like training
  features did. A fine-tuned model with frozen BatchNorm (headstart's default) kept ImageNet's statistics instead,
  and its head learned features normalised by those: swapping in the target's changes the features even for
  images like the training ones, and ruins such a model (measured in ``benchmarks/recipes.py``).
- ``aligned`` (the default when the run's training images are at hand): per channel, the new statistics map the
  target's activations onto the distribution the *training* images' activations had under the model as trained:
  with ``(mu0, var0)`` the layer's statistics, ``(mu_s, var_s)`` its input's on the training images and
  ``(mu_t, var_t)`` on the target, the new ``sd = sqrt(var_t) * sqrt(var0 + eps) / sqrt(var_s)`` and
  ``mean = mu_t - sd * (mu_s - mu0) / sqrt(var0 + eps)``. When the model's statistics are its training images'
  (``--bn train`` or ``--bn adabn``) this is exactly classic AdaBN; for a model with frozen ImageNet statistics it
  is what AdaBN means to do. Fed its own training images it changes nothing.

``auto`` (the default) is aligned when the training images are at hand (``source``, or the run's ``split.json``).
Without them it is classic only when the run's statistics are its training images' (``--bn adabn``, or ``--bn
train`` on every layer, as ``scratch`` does); for any other run it is an error, never a silent fallback to classic
(measured on frozen-BatchNorm runs, ``docs/recipes.md``: 15 to 27% accuracy where aligned kept 67 to 74%).

Both measure each layer's input after the layers before it have been adapted, in one pass: every batch is
normalised with the statistics adapted to that batch (as train-mode BatchNorm does), and the statistics pooled over
all batches are kept. Every image counts: a last batch smaller than the others (one image, say, whose variance over
a 1x1 feature map is zero) is normalised with the statistics pooled so far, itself included, not its own.

Labels play no part, so a multi-label run adapts as a single-label one does; the adapted run keeps its decision (a
temperature and a threshold per label, chosen on the source run's validation images before the adaptation), which
``predict``, ``evaluate``, ``report`` and ``export`` read. Check it with ``evaluate`` on labelled target images.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from torch.utils.data import DataLoader

from headstart.core.choices import ADAPT_METHODS
from headstart.core.errors import PathNotFoundError, UsageError
from headstart.data.check import scan
from headstart.data.dataset import ImageFiles, make_loader
from headstart.data.rundir import RunDir
from headstart.data.transforms import eval_transform
from headstart.predict.run import LoadedRun, expand_paths, load_run
from headstart.training.batchnorm import adapt_batchnorm, batchnorm_input_statistics, batchnorm_layers  # noqa: F401 (part of adapt's API)
from headstart.training.strategy import resolve_train_from

SOURCE_IMAGES = 2000  # training images sampled for the source statistics: plenty for a mean and variance


def training_images(run_dir: Path, limit: int = SOURCE_IMAGES, seed: int = 0) -> list[str]:
    """The run's training images (``split.json``, read by :meth:`RunDir.split`, which finds the older runs' relative
    paths from any folder) that exist, at most ``limit`` of them, sampled."""
    run = RunDir(run_dir)
    if not run.has(run.SPLIT):
        return []
    paths = [p for p, _ in run.split().train if Path(p).is_file()]
    if len(paths) > limit:
        paths = random.Random(seed).sample(paths, limit)
    return paths


def statistics_are_training_images(config: dict, num_groups: int) -> bool:
    """Whether a run's BatchNorm statistics are its training images' (the assumption of classic AdaBN): some phase
    recomputed them on those images (``bn: adabn``), or let every layer's follow them (``bn: train`` with every
    group training, as ``scratch`` does). Frozen BatchNorm keeps the pretrained statistics."""
    return any(p.get("bn") == "adabn" or (p.get("bn") == "train"
                                          and resolve_train_from(p.get("train_from", -1), num_groups) == 0)
               for p in config.get("strategy_phases") or [])


def _missing_training_images(run_dir: Path, own_statistics: bool) -> UsageError:
    found = (f"{run_dir}'s training images cannot be found (split.json's paths, tried from here, from the folder it "
             "was trained in and from its data folder), and aligned AdaBN needs them")
    if own_statistics:  # only --method aligned gets here
        return UsageError(f"{found}. Pass a folder of its training images with --source DIR, or use --method classic, "
                          "which suits this run: its BatchNorm statistics are its training images'.")
    return UsageError(
        f"{found}: this run's BatchNorm statistics are not its training images' (frozen BatchNorm keeps the "
        "pretrained ones). Pass a folder of its training images with --source DIR, or --method classic knowing that "
        "classic AdaBN assumes the run's BatchNorm statistics are its training images' (on frozen-BatchNorm runs it "
        "measured 15-27% accuracy where aligned kept 67-74%).")


def adapt_run(run_dir: str | Path, target: str | Path, out: str | Path, batch_size: int = 64,
              workers: int | None = None, device: str = "auto", overwrite: bool = False, method: str = "auto",
              source: str | Path | None = None) -> dict:
    """Writes a copy of the run in ``run_dir`` to ``out``, its BatchNorm statistics adapted to every image found
    (recursively) in ``target``; ``predict`` and ``evaluate`` use it like any run. Returns what was done.

    Args:
        run_dir: a ``headstart train`` run.
        target: a folder of unlabelled images from the target domain (class subfolders are fine; labels unused).
        out: the new run directory.
        batch_size: images per forward pass (at least 2); larger batches give steadier statistics.
        method: ``aligned``, ``classic`` or ``auto``: aligned when the training images are at hand (``source`` or
            ``split.json``); without them classic if the run's statistics are its training images'
            (:func:`statistics_are_training_images`), else a ``ValueError`` saying what to pass.
        source: a folder of the training domain's images for ``aligned``; default the run's own training images
            (:func:`training_images`).
    """
    _check_arguments(method, source, batch_size)
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise UsageError(f"--out must be a new folder, not the run itself ({run_dir}); the original run is kept.")
    run = load_run(run_dir, device=device)  # a broken run fails before --out is touched
    RunDir(out).prepare(overwrite)
    n_bn = len(batchnorm_layers(run.model))
    own_statistics = statistics_are_training_images(run.config, len(run.model.group_names))
    loader, bad = _loader(run, _folder_images(target, "(unlabelled) target-domain"), target, batch_size, workers)
    source_loader, source_from = None, None
    if method != "classic" and n_bn:
        source_loader, source_from = _source_loader(run, source, batch_size, workers)
        if source_loader is None and (method == "aligned" or not own_statistics):
            raise _missing_training_images(run_dir, own_statistics)
    seen = adapt_batchnorm(run.model, [loader], run.runtime,
                           source=[source_loader] if source_loader is not None else None) if n_bn else 0
    used = "aligned" if source_loader is not None else "classic"
    info = {"from_run": str(run_dir.resolve()), "target": str(Path(target).resolve()), "images": seen,
            "batchnorm_layers": n_bn, "unreadable": len(bad), "method": used,
            "reference": "AdaBN (Li et al. 2016)" + (", aligned to the training images' statistics" if
                                                      used == "aligned" else "")}
    if source_from:
        info["source"] = source_from
    if n_bn and used == "classic" and not own_statistics:
        info["warning"] = (f"{run_dir}'s BatchNorm statistics are not its training images' (frozen BatchNorm keeps "
                           "the pretrained ones), so classic AdaBN may make it worse; pass its training images with "
                           "--source DIR (aligned AdaBN), and check on labelled target images.")
    _write_adapted(run, RunDir(run_dir), RunDir(out), info)
    return info


def _check_arguments(method: str, source, batch_size: int) -> None:
    if method not in ADAPT_METHODS:
        raise UsageError(f"--method must be one of {', '.join(ADAPT_METHODS)}, got '{method}'.")
    if method == "classic" and source is not None:
        raise UsageError("--source is for aligned AdaBN and classic does not use it; drop --source or --method "
                         "classic.")
    if batch_size < 2:
        raise UsageError(f"--batch-size must be at least 2 for AdaBN (one image's statistics are not a domain's), "
                         f"got {batch_size}.")


def _folder_images(folder, what: str) -> list[str]:
    if not Path(folder).is_dir():
        raise PathNotFoundError(f"{folder} is not a folder; pass a folder of {what} images.")
    return expand_paths([folder])


def _loader(run: LoadedRun, paths: list[str], name, batch_size: int, workers) -> tuple[DataLoader, list]:
    """The readable images among ``paths`` (at least 2), every one used: a small last batch is normalised with the
    pooled statistics (:func:`adapt_batchnorm`)."""
    samples, bad = scan([(p, 0) for p in paths])
    if len(samples) < 2:
        raise UsageError(f"{name} holds {len(samples)} readable image(s); AdaBN needs at least 2 (a few hundred "
                         "give steady statistics).")
    return make_loader(ImageFiles(samples, eval_transform(run.preprocessing)), min(batch_size, len(samples)),
                       shuffle=False, workers=workers), bad


def _source_loader(run: LoadedRun, source, batch_size: int, workers) -> tuple[DataLoader | None, str | None]:
    """The training domain's images for aligned AdaBN: ``source`` if given, else the run's own training images."""
    if source is not None:
        loader, _ = _loader(run, _folder_images(source, "training-domain"), source, batch_size, workers)
        return loader, str(Path(source).resolve())
    if found := training_images(run.path):
        loader, _ = _loader(run, found, "the run's training images", batch_size, workers)
        return loader, f"{len(found)} of the run's training images (split.json)"
    return None, None


def _write_adapted(run: LoadedRun, source: RunDir, out: RunDir, info: dict) -> None:
    """The adapted run: the source run's record of its training images, the adapted weights, ``adapt.json``."""
    for name in (out.CLASSES, out.SPLIT, out.SKIPPED, out.FINGERPRINTS):  # the same training images
        if source.has(name):
            shutil.copy2(source / name, out / name)
    out.write_config({**run.config, "adapted": info})
    shipped = source.weights_metadata(source.BEST)
    # A multi-label run's decision (a temperature and a threshold per label, chosen on its validation images before
    # the adaptation) is how its scores become labels: without it no command could read the adapted run.
    task = {k: shipped[k] for k in ("task", "decision") if k in shipped}
    out.save_weights(out.BEST, run.model, {"model": run.config["model"], "classes": run.classes,
                                           "preprocessing": run.preprocessing.to_dict(), **task, "adapted": info})
    out.write_json(out.ADAPT, info)
