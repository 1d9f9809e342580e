"""Precision chosen by what the hardware does, not by what it can emulate."""

from __future__ import annotations

import os

import torch

from headstart.cli import main
from headstart.core import hardware
from headstart.core import runtime as rt
from headstart.core.progress import progress


def test_a_cpu_without_native_bf16_gets_fp32(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw", "avx512vl", "fma"})
    r = rt.make_runtime("cpu", "auto")
    assert r.amp_dtype is None and "fp32" in r.describe()


def test_a_cpu_with_avx512_bf16_or_amx_gets_bf16(monkeypatch):
    for flags in ({"avx512f", "avx512_bf16"}, {"amx_bf16", "amx_tile"}):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert rt.make_runtime("cpu", "auto").amp_dtype == torch.bfloat16


def test_explicit_precision_wins_and_fp16_scales_gradients_only_on_cuda(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set())
    assert rt.make_runtime("cpu", "bf16").amp_dtype == torch.bfloat16
    cpu = rt.make_runtime("cpu", "fp16")
    assert not cpu.scales_gradients and not cpu.grad_scaler().is_enabled()
    assert rt.Runtime(torch.device("cuda"), torch.float16, channels_last=True).scales_gradients
    assert not rt.Runtime(torch.device("cuda"), torch.bfloat16, channels_last=True).scales_gradients


def test_this_machine_reads_its_own_flags():
    flags = hardware.cpu_flags()
    assert hardware.cpu_has_native_bf16(flags) == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_progress_off_a_terminal_is_periodic_lines_on_stderr(capsys):
    assert list(progress(range(3), "features", interval=0)) == [0, 1, 2]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("features: 1/3 batches") and lines[-1].startswith("features: 3/3 batches")
    quiet = progress(range(3), "x", enabled=False)
    quiet.set_postfix(loss="0.1")  # callers may update a bar that is not shown
    assert list(quiet) == [0, 1, 2] and capsys.readouterr().err == ""


def test_the_command_line_sets_a_passive_omp_wait_policy_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(["cache", "info", "--json"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["cache", "info", "--json"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
