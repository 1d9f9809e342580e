"""AdaBN: BatchNorm statistics recomputed on images of the target domain, without labels or gradients.

A network's BatchNorm layers normalise with the mean and variance of the images it was trained on. When the
images it meets later differ in a systematic way (another scanner, camera, lighting, stain, season), those
statistics are wrong for them, and accuracy drops even though the features are still useful. Li et al. 2016
("Revisiting Batch Normalization for Practical Domain Adaptation") replace them by the target domain's own
statistics: forward passes over unlabelled target images, nothing else changes. Use ``headstart adapt RUN
TARGET_DIR --out RUN2`` when a trained model is deployed on images that look different from its training images
and a few hundred of them (unlabelled) are at hand; evaluate both runs on labelled target images if there are any.
Models without BatchNorm (ViTs, ConvNeXt's LayerNorm) have nothing to adapt.

AdaBN assumes the model's statistics are those of its training images: then the target's features, normalised
by the target's own statistics, look like the training features did. A run trained with ``--bn frozen`` (the
default) kept ImageNet's statistics instead, and the head learned features normalised by those; swapping in the
target's statistics then changes the features for source images too, and can ruin the model (measured in
``benchmarks/recipes.py``). Train with ``--bn adabn`` (statistics recomputed on the training images before
training) or ``--bn train`` when the model is to be adapted later; ``adapt`` warns otherwise.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import torch
import yaml
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from headstart.engine.runtime import Runtime


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, loaders: Iterable[DataLoader], runtime: Runtime,
                    desc: str = "adabn") -> int:
    """Replaces every BatchNorm layer's running mean and variance by their average over the batches of
    ``loaders``; parameters, dropout and everything else stay as they are. Returns the number of images seen.

    Statistics are reset, then accumulated as a cumulative average (``momentum=None``) in train mode for
    BatchNorm only; the model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    seen = 0
    try:
        for loader in loaders:
            for images, _ in tqdm(loader, desc=desc, leave=False, disable=None if runtime.is_main else True):
                if len(images) < 2:
                    continue  # a batch of one has no variance
                with runtime.autocast():
                    model(runtime.to_input(images))
                seen += len(images)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
    if not seen:
        raise ValueError("AdaBN needs at least 2 images in a batch to measure statistics; give it more images.")
    return seen


def adapt_run(run_dir: str | Path, target: str | Path, out: str | Path, batch_size: int = 64,
              workers: int | None = None, device: str = "auto", overwrite: bool = False) -> dict:
    """Writes a copy of the run in ``run_dir`` to ``out``, its BatchNorm statistics recomputed on the images found
    (recursively) in ``target``; ``predict``, ``evaluate`` and ``export`` use it like any run. Returns what was done.

    Args:
        run_dir: a ``headstart train`` run.
        target: a folder of unlabelled images from the target domain (class subfolders are fine; labels unused).
        out: the new run directory.
        batch_size: larger batches give steadier statistics.
    """
    from headstart.data.dataset import ImageDataset, make_loader, scan
    from headstart.data.transforms import eval_transform
    from headstart.engine.checkpoint import save_weights, write_json
    from headstart.inference import expand_paths, load_run

    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out must be a new folder, not the run itself ({run_dir}); the original run is kept.")
    if (out / "config.yaml").exists() and not overwrite:
        raise ValueError(f"{out} already holds a run; pass another --out, or --overwrite to replace it.")
    run = load_run(run_dir, device=device)
    if not Path(target).is_dir():
        raise FileNotFoundError(f"{target} is not a folder; pass a folder of (unlabelled) target-domain images.")
    samples, bad = scan([(p, 0) for p in expand_paths([target])])
    if len(samples) < 2:
        raise ValueError(f"{target} holds {len(samples)} readable image(s); AdaBN needs at least 2 (a few hundred "
                         "give steady statistics).")
    batch_size = min(batch_size, len(samples))
    loader = make_loader(ImageDataset(samples, eval_transform(run.preprocessing)), batch_size, shuffle=False,
                         workers=workers, drop_last=len(samples) > batch_size)
    n_bn = sum(isinstance(m, _BatchNorm) for m in run.model.modules())
    seen = adapt_batchnorm(run.model, [loader], run.runtime) if n_bn else 0

    out.mkdir(parents=True, exist_ok=True)
    for name in ("classes.json", "split.json", "skipped.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    info = {"from_run": str(run_dir.resolve()), "target": str(Path(target).resolve()), "images": seen,
            "batchnorm_layers": n_bn, "unreadable": len(bad), "method": "AdaBN (Li et al. 2016)"}
    phases = run.config.get("strategy_phases") or []
    if n_bn and phases and all(p.get("bn") == "frozen" for p in phases):
        info["warning"] = (f"{run_dir} was trained with --bn frozen: its BatchNorm statistics are the pretrained "
                           "ones, not its training images', so AdaBN may make it worse; check on labelled target "
                           "images, or train with --bn adabn before adapting.")
    config = {**run.config, "adapted": info}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    save_weights(out / "best.safetensors", run.model, {"model": run.config["model"], "classes": run.classes,
                                                       "preprocessing": run.preprocessing, "adapted": info})
    write_json(out / "adapt.json", info)
    return info
