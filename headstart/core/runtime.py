"""Chosen once at start-up: device, precision, memory format, threads, and the distributed rank."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from headstart.core import hardware
from headstart.core.distributed import init_distributed
from headstart.core.errors import UsageError


@dataclass
class Runtime:
    """How tensors are computed on this machine.

    On CPUs with native bf16, bf16 autocast with channels-last runs convolutions several times faster than fp32;
    elsewhere fp32 (:func:`headstart.core.hardware.cpu_has_native_bf16`). On CUDA, bf16 or fp16 AMP, fp16 with
    :meth:`grad_scaler`.
    ``autocast()`` is the one context the loop enters.
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

    @property
    def scales_gradients(self) -> bool:
        """fp16 autocast on a GPU: its small range underflows gradients unless the loss is scaled."""
        return self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The gradient scaler fp16 needs (:attr:`scales_gradients`); a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scales_gradients)

    def describe(self) -> str:
        amp = str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "fp32"
        return f"{self.device.type}, {amp}{', channels-last' if self.channels_last else ''}"


def cuda_amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it natively (Ampere and later), else fp16 (with a gradient scaler)."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def make_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Picks device and precision.

    Args:
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 on CPUs that compute it natively, else fp32; bf16 AMP on GPUs that have it
            natively, else fp16 with a gradient scaler), ``bf16``, ``fp16`` or ``fp32``.
    """
    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    rank, world = init_distributed(dev)
    if precision == "auto":
        if dev.type == "cuda":
            amp = cuda_amp_dtype(dev)
        else:
            amp = torch.bfloat16 if hardware.cpu_has_native_bf16() else None
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
