"""How fast a backbone extracts features on this machine: measured once, remembered.

Choosing a backbone within a time budget needs each candidate's cost here, not a table from someone else's GPU:
images x seconds per image of that backbone, at that resolution, in the precision this machine computes in.
:func:`throughput` measures it (the eval forward the feature extraction uses: BatchNorm folded, channels-last,
the runtime's autocast, random images in calls of :data:`~headstart.features.forward.CPU_CHUNK` on a CPU, of 32 on
a GPU) and remembers it in ``speeds.json`` beside the feature cache,
keyed by everything that changes it: backbone, resolution, the work (extraction, or a training phase:
:mod:`headstart.training.budget` measures those), precision, threads, the CPU model (or GPU name) and torch's
version. ``headstart models --measure`` fills it; the listing shows what is there.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from headstart.core.io import write_json
from headstart.core.runtime import Runtime
from headstart.features.cache import SPEEDS, cache_root, cpu_model, remembered_speeds
from headstart.features.forward import CPU_CHUNK, fast_forward
from headstart.zoo.model import build_model

BATCH = 32  # images per training step measured (training.budget); extraction's are forward.CPU_CHUNK on a CPU


def where() -> str:
    """The processor (or GPU) a figure was measured on."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return cpu_model()


def conditions(backbone: str, resolution: int, runtime: Runtime, work: str = "extract") -> dict:
    """What a figure depends on; ``work`` is ``extract`` (the eval forward) or a training phase's name."""
    precision = str(runtime.amp_dtype).removeprefix("torch.") if runtime.amp_dtype else "fp32"
    return {"backbone": backbone, "resolution": resolution, "work": work, "device": runtime.device.type,
            "precision": precision, "machine": where(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def remembered(conditions: dict, root: str | Path | None = None) -> float | None:
    """The last figure measured under exactly these conditions, or None."""
    same = [r for r in remembered_speeds(root) if {k: r.get(k) for k in conditions} == conditions]
    return same[-1]["img_per_s"] if same else None


def remember(conditions: dict, rate: float, root: str | Path | None = None) -> float:
    """Keeps ``rate`` as the figure for ``conditions`` (replacing an older one) and returns it."""
    others = [r for r in remembered_speeds(root) if {k: r.get(k) for k in conditions} != conditions]
    try:
        write_json(Path(root or cache_root()) / SPEEDS, [*others, {**conditions, "img_per_s": round(rate, 1),
                                                                    "measured": time.strftime("%Y-%m-%d")}])
    except OSError:  # a read-only cache: the figure is still returned
        pass
    return rate


@torch.inference_mode()
def throughput(backbone: str, resolution: int, runtime: Runtime, root: str | Path | None = None,
               seconds: float = 3.0, remeasure: bool = False) -> float:
    """Images per second of ``backbone``'s feature extraction at ``resolution`` on this machine: remembered, or
    measured (at least two timed batches after a warm-up, about ``seconds`` in all) and remembered."""
    measured = conditions(backbone, resolution, runtime)
    if not remeasure and (rate := remembered(measured, root)) is not None:
        return rate
    model = runtime.prepare(build_model(backbone, 2, pretrained=False).eval())
    batch = CPU_CHUNK if runtime.device.type == "cpu" else BATCH  # what one call of the extraction's forward takes
    x = runtime.to_input(torch.randn(batch, 3, resolution, resolution))
    forward = fast_forward(model.backbone, runtime, x[:1], images=batch, engine="torch")
    with runtime.autocast():
        forward(x)  # warm-up: kernels chosen, memory allocated
        done, start = 0, time.perf_counter()
        while done < 4 * batch or time.perf_counter() - start < seconds:
            forward(x)
            done += batch
    return remember(measured, done / (time.perf_counter() - start), root)


def observe(backbone: str, resolution: int, runtime: Runtime, images: int, seconds: float, work: str = "extract",
            root: str | Path | None = None) -> None:
    """Remembers the rate a real pass just ran at (decoding included: what the next run's user waits for), as
    ``<work>:observed``; passes too short to say anything (under 32 images or half a second) are not kept."""
    if images >= 32 and seconds >= 0.5:
        remember(conditions(backbone, resolution, runtime, work=f"{work}:observed"), images / seconds, root)


def planning_rate(backbone: str, resolution: int, runtime: Runtime, work: str = "extract",
                  root: str | Path | None = None) -> float | None:
    """The rate to plan with: the last real pass's (:func:`observe`), which follows the machine as it is now (a
    figure measured once on a busy machine would stay pessimistic, one from an idle moment optimistic); None when
    no pass has been seen here yet."""
    return remembered(conditions(backbone, resolution, runtime, work=f"{work}:observed"), root)


def rate_to_plan(backbone: str, resolution: int, runtime: Runtime) -> float:
    """Extraction speed to plan with: the last real pass's here (:func:`planning_rate`), else the backbone's own
    (:func:`throughput`, measured once)."""
    return planning_rate(backbone, resolution, runtime) or throughput(backbone, resolution, runtime)
