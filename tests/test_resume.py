"""A run killed with SIGKILL mid-epoch and resumed ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

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


def _kill_then_resume_matches_uninterrupted(tmp_path, extra: list[str], kill_after_lines: int, epochs: int):
    data = make_class_folder(tmp_path / "d", per_class=12, size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(data, tmp_path / "a", *extra), check=True, env=env, capture_output=True)

    run_b = tmp_path / "b"
    proc = subprocess.Popen(_train_cmd(data, run_b, *extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_b / "metrics.jsonl").exists() and \
                len((run_b / "metrics.jsonl").read_text().splitlines()) >= kill_after_lines:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_metrics(run_b)) < epochs
    done = subprocess.run([sys.executable, "-m", "headstart", "train", "--resume", str(run_b)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming after epoch" in done.stderr

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
    _kill_then_resume_matches_uninterrupted(tmp_path, [], kill_after_lines=2, epochs=5)


def test_sigkill_in_the_second_phase_with_a_loader_worker_then_resume_matches(tmp_path):
    """fine-tune: the head fitted on features, then the later layers trained; killed during the second phase,
    with a loader worker augmenting (its seed must follow the epoch, not the process)."""
    weights = tmp_path / "w.pth"
    torch.manual_seed(0)
    torch.save(create_backbone("resnet20", pretrained=False)[0].state_dict(), weights)
    metrics = _kill_then_resume_matches_uninterrupted(
        tmp_path, ["--strategy", "fine-tune", "--weights", str(weights), "--workers", "1", "--epochs", "4"],
        kill_after_lines=3, epochs=5)
    assert [m["phase"] for m in metrics] == ["head"] + ["fine-tune"] * 4


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    from headstart.cli import main

    (tmp_path / "r").mkdir()
    assert main(["train", "--resume", str(tmp_path / "r")]) == 2
    assert "not a headstart run" in capsys.readouterr().err
