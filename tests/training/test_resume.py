"""A run killed with SIGKILL mid-epoch, at a known batch, and resumed ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from headstart.cli import main
from headstart.core.io import load_weights
from headstart.zoo import create_backbone
from tests.conftest import make_class_folder

pytestmark = pytest.mark.slow


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "headstart", "train", str(data), "--out", str(out), "--model", "resnet20",
            "--strategy", "scratch", "--epochs", "5", "--batch-size", "4", "--workers", "0", "--patience", "10",
            "--precision", "fp32", "--seed", "3", *extra]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ``headstart train`` in a process that SIGKILLs itself at a known point: in its ``epoch``-th training epoch (counted
# over every phase's epochs), just before the batch numbered ``batch`` (0-based), so ``batch`` optimizer steps of that
# epoch have run and nothing of it is saved. Every earlier epoch has finished its metrics line and checkpoints.
_DIES_MID_EPOCH = """
import os, signal, sys
from headstart.cli import main
from headstart.training import loop

epoch, batch = int(os.environ["DIE_IN_EPOCH"]), int(os.environ["DIE_BEFORE_BATCH"])
real, calls = loop.train_one_epoch, []


class DiesMidEpoch:
    def __init__(self, loader):
        self.loader, self.dataset = loader, loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i == batch:
                os.kill(os.getpid(), signal.SIGKILL)
            yield b


def train_one_epoch(model, loader, *args, **kwargs):
    calls.append(1)
    return real(model, DiesMidEpoch(loader) if len(calls) == epoch else loader, *args, **kwargs)


loop.train_one_epoch = train_one_epoch
sys.exit(main(sys.argv[1:]))
"""


def _kill_then_resume_matches_uninterrupted(tmp_path, extra: list[str], die_in_epoch: int, lines_before: int,
                                            epochs: int):
    """Kills run b two optimizer steps into its ``die_in_epoch``-th training epoch, after ``lines_before`` metrics
    lines, resumes it, and compares it with run a, never interrupted."""
    data = make_class_folder(tmp_path / "d", per_class=12, size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(data, tmp_path / "a", *extra), check=True, env=env, capture_output=True)

    run_b = tmp_path / "b"
    cmd = [sys.executable, "-c", _DIES_MID_EPOCH, *_train_cmd(data, run_b, *extra)[3:]]
    log = tmp_path / "b.log"  # a file, not a pipe: a loader worker outliving its parent must not hold the test
    with open(log, "w") as err:
        killed = subprocess.run(cmd, env={**env, "DIE_IN_EPOCH": str(die_in_epoch), "DIE_BEFORE_BATCH": "2"},
                                stdout=subprocess.DEVNULL, stderr=err, timeout=600)
    assert killed.returncode == -signal.SIGKILL, log.read_text()[-2000:]  # it died where it was told, not before
    assert len(_metrics(run_b)) == lines_before
    done = subprocess.run([sys.executable, "-m", "headstart", "train", "--resume", str(run_b)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {lines_before}" in done.stderr

    a, b = _metrics(tmp_path / "a"), _metrics(run_b)
    assert [m["global_epoch"] for m in b] == list(range(1, epochs + 1))
    assert [m["phase"] for m in a] == [m["phase"] for m in b]
    for ma, mb in zip(a, b):
        assert ma["val_loss"] == pytest.approx(mb["val_loss"], rel=1e-4, abs=1e-5)
        if "train_loss" in ma:
            assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-4, abs=1e-5)
    wa, wb = load_weights(tmp_path / "a" / "best.safetensors"), load_weights(run_b / "best.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    return a


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    _kill_then_resume_matches_uninterrupted(tmp_path, [], die_in_epoch=3, lines_before=2, epochs=5)


def test_sigkill_in_the_second_phase_with_a_loader_worker_then_resume_matches(tmp_path):
    """fine-tune: the head fitted on features, then the later layers trained; killed during the second phase,
    with a loader worker augmenting (its seed must follow the epoch, not the process)."""
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(create_backbone("resnet20", pretrained=False)[0].state_dict(), weights)
    metrics = _kill_then_resume_matches_uninterrupted(
        tmp_path, ["--strategy", "fine-tune", "--weights", str(weights), "--workers", "1", "--epochs", "4"],
        die_in_epoch=3, lines_before=3, epochs=5)  # the head's line, then two fine-tune epochs
    assert [m["phase"] for m in metrics] == ["head"] + ["fine-tune"] * 4


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    assert main(["train", "--resume", str(tmp_path / "r")]) == 2
    assert "not a headstart run" in capsys.readouterr().err
