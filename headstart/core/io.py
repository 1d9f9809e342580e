"""Files that survive crashes: written to a temporary file, flushed, then renamed over the old one.

Everything headstart writes into a run goes through :func:`atomic_write`: JSON, YAML, text, weights (safetensors,
no pickle) and the training state (``torch.save`` of tensors and plain types only, read back with
``weights_only=True``). The files get the permissions any new file would (``0o666`` less the umask), not the
``0o600`` of the temporary file they were written as.
"""

from __future__ import annotations

import contextlib
import csv
import json
import mmap
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import safetensors.numpy
import yaml
from safetensors import safe_open

from headstart.core.errors import DataError, OutputError

if TYPE_CHECKING:
    import torch

# torch (and safetensors.torch, which imports it) is imported where tensors are written or read: reading a run's
# JSON and YAML (the report, ``evaluate`` from cached features) must not cost torch's import, four seconds on a
# small machine.


DEFAULT_CACHE_ROOT = Path.home() / ".cache" / "headstart" / "features"


def cache_root() -> Path:
    """Where headstart keeps what it computed once (features, speeds, the check's facts): ``$HEADSTART_CACHE`` when
    set, else ``~/.cache/headstart/features``."""
    return Path(os.environ.get("HEADSTART_CACHE") or DEFAULT_CACHE_ROOT)


def release_pages(array) -> None:
    """Unmaps the pages of a memory-mapped ``array`` (``np.load(..., mmap_mode="r")``) that this process has read;
    they stay in the page cache, so reading them again costs a page-table entry, not a disk read. Pages read
    through a mapping count in the process's resident memory while mapped: without this, reading the cached
    features of 100,000 Lite0 images once would add 0.5 GB to it, on top of the copy that was asked for."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(mmap.MADV_DONTNEED)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Calls ``write(tmp_path)`` then renames onto ``path``: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_yaml(path: str | Path, obj) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_npy(path: str | Path, array) -> None:
    """A numpy array as ``.npy``, no pickle."""
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def write_csv_rows(path: str | Path, columns: list[str], rows: list[dict], what: str = "a folder") -> Path:
    """``rows`` (dicts keyed by ``columns``) as a CSV with a header, its folder made; a place that cannot be
    written is one sentence that says to pass ``what`` you can write to."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); pass {what} you can write to.") from exc
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """One dict per line; a torn last line (a crash while it was appended) is left out, any other bad line is an
    error naming the file and line."""
    lines = Path(path).read_text().splitlines() if Path(path).is_file() else []
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # written half when the process died: that epoch is redone on resume
            raise DataError(f"{path} line {i + 1} is not JSON; the file was edited or damaged.") from None
    return records


def save_weights(path: str | Path, model: torch.nn.Module, metadata: dict | None = None) -> None:
    """Model weights as safetensors (no pickle), with JSON metadata in the header."""
    from safetensors.torch import save_file  # torch: not at import time, so JSON and YAML readers stay torch-free

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # torch: not at import time, so JSON and YAML readers stay torch-free

    return _read_safetensors(path, load_file)


def load_weights_numpy(path: str | Path) -> dict:
    """The tensors of a safetensors file as numpy arrays, without importing torch."""
    return _read_safetensors(path, safetensors.numpy.load_file)


def _read_safetensors(path: str | Path, load_file) -> dict:
    try:
        return load_file(str(path))
    except (OSError, TypeError):
        raise  # cannot be read, or a dtype numpy lacks (bf16): the caller knows what to do
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own error for a damaged or cut file)
        raise DataError(f"{path} is not a readable safetensors file ({exc}); it was damaged or cut short. Restore "
                        "it, or train the run again.") from None


def weights_metadata(path: str | Path) -> dict:
    """The JSON metadata ``save_weights`` put in a safetensors header (without reading the tensors)."""
    def read(name):
        with safe_open(name, framework="numpy") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}

    return _read_safetensors(path, read)


def save_state(path: str | Path, state: dict) -> None:
    """Training state (model, optimizer, scheduler, counters, RNG) for resuming; only tensors and plain types."""
    import torch  # torch: not at import time, so JSON and YAML readers stay torch-free

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    import torch  # torch: not at import time, so JSON and YAML readers stay torch-free

    return torch.load(path, map_location="cpu", weights_only=True)
