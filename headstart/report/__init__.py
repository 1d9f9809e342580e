"""``headstart report``: one self-contained HTML page for a run, or for a ``compare`` folder, to show people.

A run's page holds what was trained on what (data per split and class, skipped and duplicate files, imbalance),
the model and the strategy with auto's reason, the training curves, per-class figures and the confusion matrix
(test split and the last ``evaluate``), the reliability diagram, and the top losses: the held-out images the model
gets most confidently wrong, as thumbnails, each with its Grad-CAM heat map. Images and styles are inside the file
(base64 PNG/JPEG, inline CSS): it opens offline and can be emailed. :class:`TensorBoardLogger` is the live
counterpart, for ``train``.
"""

from __future__ import annotations

from pathlib import Path

from headstart.core.errors import OutputError, RunNotFoundError
from headstart.core.io import atomic_write
from headstart.data.rundir import RunDir, refuse_run_files
from headstart.report.tensorboard import TensorBoardLogger


def write_report(path: str | Path, out: str | Path | None = None, *, top_losses: int = 24, max_images: int = 2000,
                 device: str = "auto", loaded=None, heatmaps: bool = True) -> Path:
    """Writes the report of a run directory, or of a ``compare`` output folder, and returns the file's path.

    Args:
        path: a ``headstart train`` run (``config.yaml``) or a ``headstart compare`` folder (``compare.json``).
        out: the HTML file; default ``report.html`` inside ``path``.
        top_losses: how many of the most confidently wrong held-out images to show (0: none, and the model is not
            loaded).
        max_images: at most this many test and validation images are predicted to find them (test first).
        device: where the model predicts them (``auto``: CUDA when present).
        loaded: the run's :class:`~headstart.predict.run.LoadedRun` when the caller has it (``evaluate``): not loaded
            a second time.
        heatmaps: show each top loss's Grad-CAM heat map beside it (:mod:`headstart.explain`), when the run's
            network can be loaded through torch.

    Raises:
        RunNotFoundError: ``path`` is neither.
        OutputError: ``out`` is one of a run's own files (its weights, its records), or cannot be written.
    """
    from headstart.report.compare import compare_report, is_compare_folder  # only the page asked for is imported

    path = Path(path)
    run = RunDir(path)
    if not run.is_run() and not is_compare_folder(path):
        what = ("does not exist" if not path.exists() else "is a file, not a run directory" if not path.is_dir()
                else f"has neither {RunDir.CONFIG} nor compare.json")
        raise RunNotFoundError(f"{path} {what}; pass the --out folder of a `headstart train` run or of a "
                               "`headstart compare`.")
    target = Path(out) if out is not None else path / RunDir.REPORT
    refuse_run_files([target], own=path, allowed=(RunDir.REPORT,))  # before the work, not after it
    if run.is_run() and run.config().get("task") == "multilabel":
        from headstart.report.multilabel import multilabel_report  # only the page asked for is imported

        html = multilabel_report(path, max_images=max_images, device=device, loaded=loaded)
    elif run.is_run():
        from headstart.report.run import run_report  # only the page asked for is imported

        html = run_report(path, top_losses=top_losses, max_images=max_images, device=device, loaded=loaded,
                          heatmaps=heatmaps)
    else:
        html = compare_report(path)
    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the report to {target} ({exc.strerror or exc}); pass a file in a folder "
                          "you can write to.") from None
    return target


__all__ = ["TensorBoardLogger", "write_report"]
