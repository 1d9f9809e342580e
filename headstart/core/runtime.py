"""Chosen once at start-up: device, precision, memory format, threads, and the distributed rank."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from headstart.core.errors import UsageError


@dataclass
class Runtime:
    """How tensors are computed on this machine.

    On CPU, bf16 autocast with channels-last runs convolutions several times faster than fp32 (measured in
    ``benchmarks/``); on CUDA, fp16/bf16 AMP. ``autocast()`` is the one context the loop enters.
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        amp = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "fp32"
        return f"{self.device.type}, {amp}{', channels-last' if self.channels_last else ''}"


def _cpu_supports_bf16() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def make_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Picks device and precision.

    Args:
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 on CPUs that support it, fp16/bf16 AMP on CUDA), ``bf16``, ``fp16`` or ``fp32``.
    """
    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    from headstart.core.distributed import init_distributed

    rank, world = init_distributed(dev)
    if precision == "auto":
        if dev.type == "cuda":
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            amp = torch.bfloat16 if _cpu_supports_bf16() else None
    else:
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}.get(precision, "bad")
        if amp == "bad":
            raise UsageError(f"--precision must be auto, bf16, fp16 or fp32, got '{precision}'.")
    if dev.type == "cpu":
        # Intra-op threads = cores: PyTorch's default can oversubscribe when loader workers share the machine.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cpus // max(1, world)))
    return Runtime(dev, amp, channels_last=True, rank=rank, world_size=world)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
