"""The errors headstart raises on purpose: each says what is wrong and what to do, in one sentence.

The command line prints them as one line and exits 2; anything else (a bug, CUDA running out of memory) keeps its
traceback, because a sentence would hide what happened. Each also derives from the built-in exception a Python
caller would expect (``ValueError``, ``FileNotFoundError``...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class HeadstartError(Exception):
    """Base of every error headstart raises for its user to fix."""


class UsageError(HeadstartError, ValueError):
    """An option or argument that cannot work (a negative learning rate, an unknown strategy)."""


class DataError(HeadstartError, ValueError):
    """The images or folders cannot be used as given (no classes, no validation images, unreadable files)."""


class PathNotFoundError(HeadstartError, FileNotFoundError):
    """A file or folder given on the command line (or to a function) does not exist."""


class RunNotFoundError(PathNotFoundError):
    """A path that should be a run directory (or a file in one) is not there."""


class WeightsError(HeadstartError, ValueError):
    """Pretrained or saved weights are missing, damaged, or do not fit the model."""


class TrainingDiverged(HeadstartError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutputError(HeadstartError, PermissionError):
    """An output folder cannot be written, or would mix a run with files that are not one."""


class ParityError(WeightsError):
    """An exported model does not give the run's outputs within the stated tolerance; it was not written."""
