"""Frozen-backbone features for a list of image files: computed once, fast, then read from the cache.

The pipeline keeps the backbone the bottleneck. Decoding, resizing and cropping give uint8 images; each is turned
to float and normalised while it sits in cache, written straight into the batch (channels-last for PyTorch), and
the backbone runs in the fastest eval form the machine has (:mod:`headstart.features.forward`: ONNX Runtime for
large fp32 CPU passes, else BatchNorm folded into the convolutions, under the runtime's autocast: bf16 on CPUs
that have it natively, AMP on CUDA, where the uint8 batch is normalised on the GPU). The
numbers are exactly those of :func:`headstart.data.transforms.eval_transform`: the same kernels and float ops.

Where the data work runs: in loader workers when there are more than two cores. On two cores (no loader workers,
:func:`headstart.data.dataset.default_workers`) the images are split into *lanes*: as many threads as PyTorch has
intra-op threads, each decoding a batch and running the backbone on it with one intra-op thread, so one lane's
decoding overlaps the other's forward and no OpenMP barrier waits on a core another job holds (two Gloo processes
extracted 2.6x as fast as one process that decoded between two-thread forwards). Measured costs per image on one
core, for a 256 px JPEG going to 128 px: decode ~0.45 ms, resize and crop ~0.2 ms, float and normalise ~0.1 ms;
EfficientNet-Lite0 in bf16 needs ~2.3 core-ms at 128 px and ~7 at 224 px (``benchmarks/scale.py extraction``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from headstart.core.hashing import KnownHashes, content_hashes, tensors_digest
from headstart.core.preprocessing import Preprocessing
from headstart.core.progress import format_duration, progress
from headstart.core.runtime import Runtime
from headstart.data.dataset import ImageFiles, default_workers, make_loader
from headstart.data.transforms import eval_resize_crop
from headstart.features.cache import FeatureCache, feature_key
from headstart.features.forward import choose_engine, eval_forward, in_chunks
from headstart.features.speed import observe, throughput
from headstart.zoo.model import TransferModel

SHARD_ROWS = 4096  # rows per cache shard (21 MB at 1280 features): what an interrupted extraction loses at most
ESTIMATE_ABOVE = 5000  # images from which an extraction says how long it expects to take


def cache_key(model: TransferModel, preprocessing: Preprocessing | dict, runtime: Runtime, view: str = "eval") -> dict:
    """Everything a feature row depends on besides the image (:func:`headstart.features.cache.feature_key`), for
    ``model``'s backbone as its weights are now and the precision ``runtime`` computes in."""
    precision = str(runtime.amp_dtype).removeprefix("torch.") if runtime.amp_dtype else "fp32"
    return feature_key(model.spec.name, tensors_digest(model.backbone.state_dict()), preprocessing, precision, view)


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 ``(x / 255 - mean) / std``: the very ops of torchvision's ``ToDtype(scale=True)`` and
    ``Normalize``, hence the very numbers."""
    return x.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


class _Collate:
    """:class:`~headstart.data.dataset.ImageFiles` items (uint8 images) -> (batch, reasons).

    With ``to_float`` the batch is float32, normalised one image at a time (in cache: half the CPU time of four
    passes over a 19 MB batch of 32 images at 224 px) into the channels-last layout the backbone wants; without it
    (for a GPU) the batch stays uint8, a quarter of the bytes to move.
    """

    def __init__(self, preprocessing: Preprocessing, to_float: bool, channels_last: bool):
        self.mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(preprocessing.std, dtype=torch.float32).view(-1, 1, 1)
        self.to_float, self.channels_last = to_float, channels_last

    def __call__(self, items: list[tuple[torch.Tensor, int, str, str]]) -> tuple[torch.Tensor, list[str]]:
        images, reasons = [x for x, *_ in items], [r for *_, r in items]
        if not self.to_float:
            return torch.stack(images), reasons
        out = torch.empty((len(images), *images[0].shape), dtype=torch.float32)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        for i, image in enumerate(images):
            # the crop is a strided view of the resize: made dense first, the float ops take their vector path
            out[i] = _normalize(image.contiguous(), self.mean, self.std)
        return out, reasons


@contextlib.contextmanager
def _threads(n: int | None):
    """Runs the block on ``n`` intra-op threads (all of them when None); switching costs ~0.1 us."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def iter_features(model: TransferModel, paths: Sequence[str], preprocessing: Preprocessing | dict, runtime: Runtime,
                  batch_size: int = 64, workers: int | None = None,
                  desc: str = "features") -> Iterator[tuple[int, np.ndarray, list[str]]]:
    """Computes features batch by batch, without a cache, through the fastest eval forward this machine has for
    a pass of this size (:mod:`headstart.features.forward`: ONNX Runtime or BatchNorm folded into the convolutions).
    On a CPU, PyTorch takes :data:`~headstart.features.forward.CPU_CHUNK` images a call; with no loader workers and
    more than one intra-op thread, the batches run in lanes (:func:`_in_lanes`).

    Yields:
        (index of the batch's first path, float32 features (n, dim), reason per image: '' when it decoded).
    """
    model.eval()
    preprocessing = Preprocessing.of(preprocessing)
    on_cpu = runtime.device.type == "cpu"
    engine = choose_engine(runtime, len(paths), preprocessing.crop, preprocessing.crop)
    workers = default_workers() if workers is None else workers
    lanes = torch.get_num_threads() if on_cpu and engine == "torch" and workers == 0 else 1
    if lanes > 1 and len(paths) > batch_size:
        yield from _in_lanes(model, paths, preprocessing, runtime, batch_size, lanes, desc)
        return
    channels_last = runtime.channels_last and engine == "torch"
    loader = make_loader(ImageFiles(paths, eval_resize_crop(preprocessing)), batch_size, shuffle=False, workers=workers,
                         collate_fn=_Collate(preprocessing, to_float=on_cpu, channels_last=channels_last))
    if not on_cpu:
        mean, std = (torch.tensor(getattr(preprocessing, k), dtype=torch.float32, device=runtime.device).view(-1, 1, 1)
                     for k in ("mean", "std"))
    batches = iter(progress(loader, f"{desc} ({engine})" if engine != "torch" else desc, runtime.is_main, unit="img",
                            per_item=batch_size))
    # ONNX Runtime's pass keeps both cores busy on its own threads: a thread that decoded the next batch during it
    # gained nothing on 2 cores (0.98x to 1.05x). With more cores, loader workers decode in parallel.
    forward, start = None, 0
    while True:
        with _threads(1 if workers == 0 and on_cpu else None):  # data work in this process: one thread
            batch = next(batches, None)
        if batch is None:
            return
        images, reasons = batch
        if not on_cpu:
            x = _normalize(runtime.to_input(images), mean, std)  # the uint8 batch is normalised on the GPU
        elif engine == "torch":
            x = runtime.to_input(images)
        else:
            x = images  # ONNX Runtime takes the contiguous batch as the collate made it
        forward = forward or eval_forward(model.backbone, runtime, x[:1], engine)
        with runtime.autocast():
            feats = in_chunks(forward, x) if on_cpu and engine == "torch" else forward(x)
        yield start, feats.float().cpu().numpy(), reasons
        start += len(images)


def _in_lanes(model: TransferModel, paths: Sequence[str], preprocessing: Preprocessing, runtime: Runtime,
              batch_size: int, lanes: int, desc: str) -> Iterator[tuple[int, np.ndarray, list[str]]]:
    """:func:`iter_features` on the CPU in ``lanes`` threads, each taking the next batch, decoding it and running
    the backbone on it on one intra-op thread; batches come back in order, at most ``lanes + 1`` in flight.

    Why: a two-thread forward meets an OpenMP barrier at every operator, and while this process decoded the cores
    had nothing else to run; on a shared machine a barrier also waits for whichever core another job holds. Lanes
    share nothing but the (read-only, folded) backbone, so decoding overlaps the forward and a core that is taken
    away slows one lane, not both. The numbers are those of the one-thread forward (a convolution's result does
    not depend on how many threads computed it, to float rounding).
    """
    dataset = ImageFiles(paths, eval_resize_crop(preprocessing))
    collate = _Collate(preprocessing, to_float=True, channels_last=runtime.channels_last)
    forward = eval_forward(model.backbone, runtime, runtime.to_input(collate([dataset[0]])[0]), "torch")

    def run(start: int) -> tuple[int, np.ndarray, list[str]]:
        images, reasons = collate([dataset[i] for i in range(start, min(start + batch_size, len(paths)))])
        with torch.inference_mode(), runtime.autocast():  # both are per thread
            feats = in_chunks(forward, runtime.to_input(images))
        return start, feats.float().numpy(), reasons

    def ordered() -> Iterator[tuple[int, np.ndarray, list[str]]]:
        threads, pending = torch.get_num_threads(), deque()
        pool = ThreadPoolExecutor(lanes, thread_name_prefix="features", initializer=torch.set_num_threads,
                                  initargs=(1,))
        try:
            for start in range(0, len(paths), batch_size):
                pending.append(pool.submit(run, start))
                if len(pending) > lanes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # a consumer that stops early does not wait for batches it will never read
                future.cancel()
            pool.shutdown(wait=True)
            torch.set_num_threads(threads)  # what the lanes set is also what torch reports process-wide

    with contextlib.closing(ordered()) as results:
        yield from progress(results, desc, runtime.is_main, unit="img", total=-(-len(paths) // batch_size),
                            per_item=batch_size)


@dataclass
class Features:
    """Cached features of a list of images, in the order given; images that could not be decoded are left out.

    ``array()`` gathers them into memory (to fit a head); ``chunks()`` streams them (to write any number).
    """

    cache: FeatureCache
    paths: list[str]
    keys: list[str]
    positions: np.ndarray  # index of each kept image in the list that was asked for
    bad: list[tuple[str, str]] = field(default_factory=list)
    computed: int = 0  # images whose features were computed in this call (the rest came from the cache)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return self.cache.dim or 0

    def array(self) -> np.ndarray:
        return self.cache.read(self.keys)

    def chunks(self, rows: int = 4096) -> Iterator[np.ndarray]:
        return self.cache.iter_read(self.keys, rows)


def extract_features(model: TransferModel, paths: Sequence[str], preprocessing: Preprocessing | dict,
                     runtime: Runtime, batch_size: int = 64, workers: int | None = None,
                     cache_dir: str | Path | None = None, desc: str = "features", verbose: bool = True,
                     known_hashes: KnownHashes | None = None) -> Features:
    """Features of ``paths`` from the cache, computing (and caching) only the images it does not hold.

    Args:
        model: the model whose ``forward_features`` (its frozen backbone) gives the features.
        paths: image files; a file that cannot be read or decoded is left out and listed in ``Features.bad``.
        preprocessing: the run's preprocessing (``BackboneSpec.preprocessing``).
        runtime: device and precision.
        batch_size: images per backbone call.
        workers: decoding processes (default :func:`headstart.data.dataset.default_workers`).
        cache_dir: the cache folder (default ``$HEADSTART_CACHE`` or ``~/.cache/headstart/features``).
        desc: progress bar label.
        verbose: name skipped files on stderr.
        known_hashes: the content hashes this command has computed (the check's, ``DataSplits.hashes``): only
            files it does not hold (or that changed since) are read and hashed, and added to it.
    """
    preprocessing = Preprocessing.of(preprocessing)
    cache = FeatureCache(cache_key(model, preprocessing, runtime), cache_dir)
    hashes = content_hashes(paths, known=known_hashes)
    readable = [i for i, h in enumerate(hashes) if isinstance(h, str)]
    cached = cache.locate([hashes[i] for i in readable])[:, 0] != -1
    todo: dict[str, str] = {}  # content hash -> one path holding it
    for i, hit in zip(readable, cached):
        if not hit and hashes[i] not in cache.bad:
            todo.setdefault(hashes[i], paths[i])
    computed = 0
    if _distributed(runtime):
        torch.distributed.barrier()  # every rank has listed what is missing before any rank adds to the cache
    if todo:
        computed = _compute_into(cache, model, list(todo.values()), list(todo), preprocessing, runtime, batch_size,
                                 workers, desc)
    keep, keys, bad = [], [], []
    for i, (path, h) in enumerate(zip(paths, hashes)):
        if isinstance(h, OSError):
            bad.append((path, f"cannot be read ({h.strerror or h})"))
        elif h in cache.bad:
            bad.append((path, cache.bad[h]))
        else:
            keep.append(i)
            keys.append(h)
    if verbose:
        for path, reason in bad:
            print(f"skipping {path}: {reason}", file=sys.stderr)
    return Features(cache, [paths[i] for i in keep], keys, np.asarray(keep, dtype=np.int64), bad, computed)


def _compute_into(cache: FeatureCache, model, paths: list[str], keys: list[str], preprocessing: Preprocessing,
                  runtime: Runtime, batch_size: int, workers: int | None, desc: str) -> int:
    """Computes the features of ``paths`` into new shards of about :data:`SHARD_ROWS` rows, each committed when
    full: a run stopped midway keeps every full shard, and the next one computes only the rest. Under torchrun each
    rank takes every world_size-th image and writes its own shards; all ranks then read them all."""
    rank, world = runtime.rank, runtime.world_size
    distributed = _distributed(runtime)
    if distributed:
        paths, keys = paths[rank::world], keys[rank::world]
    say_estimate(model.spec.name, len(paths) * world, preprocessing, runtime, desc)
    rows = -(-SHARD_ROWS // batch_size) * batch_size  # whole batches per shard
    writer, first, started = None, 0, time.perf_counter()
    try:
        for start, feats, reasons in iter_features(model, paths, preprocessing, runtime, batch_size, workers, desc):
            if writer is None:
                writer, first = cache.writer(min(rows, len(paths) - start), feats.shape[1]), start
            batch_keys = keys[start:start + len(feats)]
            writer.write(start - first, feats, [k if not r else "" for k, r in zip(batch_keys, reasons)])
            for k, r in zip(batch_keys, reasons):
                if r:
                    writer.mark_bad(k, r)
            if start + len(feats) - first >= writer.rows:
                writer.commit()
                writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if distributed:
        torch.distributed.barrier()
        cache.refresh()
    seconds = time.perf_counter() - started
    if not distributed:  # the next plan (train --budget) starts from what this pass ran at
        observe(model.spec.name, preprocessing.crop, runtime, len(paths), seconds)
    if runtime.is_main and paths and seconds > 5:
        print(f"{desc}: computed {len(paths) * world} images in {seconds:.0f} s "
              f"({len(paths) * world / seconds:.1f} img/s)", file=sys.stderr, flush=True)
    return len(paths)


def say_estimate(backbone: str, images: int, preprocessing: Preprocessing, runtime: Runtime, desc: str) -> None:
    """For a large extraction, says before it starts how long it should take here: images over the backbone's
    throughput on this machine (:func:`headstart.features.speed.throughput`: remembered, or measured in ~3 s)."""
    if images < ESTIMATE_ABOVE or not runtime.is_main:
        return
    rate = throughput(backbone, preprocessing.crop, runtime) * runtime.world_size
    print(f"{desc}: {images:,} images to compute; {backbone} runs at ~{rate:.0f} img/s at {preprocessing.crop} px "
          f"here, so about {format_duration(images / rate)}", file=sys.stderr, flush=True)


def _distributed(runtime: Runtime) -> bool:
    return runtime.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
