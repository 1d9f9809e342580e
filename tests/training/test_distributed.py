"""2 CPU processes with Gloo (torchrun) train like 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from headstart.core.distributed import EpochSampler
from headstart.zoo import create_backbone
from tests.conftest import make_class_folder


def test_epoch_sampler_shards_cover_every_index_once():
    for shuffle in (False, True):
        shards = [list(EpochSampler(10, shuffle=shuffle, seed=1, rank=r, world_size=3, drop_uneven=False))
                  for r in range(3)]
        assert sorted(sum(shards, [])) == list(range(10))
    a = EpochSampler(10, shuffle=True, seed=1)
    a.set_epoch(4)
    b = EpochSampler(10, shuffle=True, seed=1)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    even = [len(EpochSampler(11, shuffle=True, rank=r, world_size=2)) for r in range(2)]
    assert even == [5, 5]  # equal steps on every rank, or DDP's all-reduce would wait forever


def _data_weights_env(tmp_path):
    """A small class folder, a random ResNet-20's weights file (both runs start from it) and one thread each."""
    data = make_class_folder(tmp_path / "d", per_class=8, size=32)
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return data, env


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    data, env = _data_weights_env(tmp_path)
    common = ["train", str(data), "--model", "resnet20", "--strategy", "fine-tune",
              "--weights", str(tmp_path / "w.pth"), "--epochs", "2", "--workers", "0", "--augment", "none",
              "--precision", "fp32", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "headstart", *common, "--out", str(tmp_path / "one"),
                          "--batch-size", "8"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "headstart", *common, "--out", str(tmp_path / "two"), "--batch-size", "4"],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert "x 2 processes" in two.stderr
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    assert_same_epochs(tmp_path / "one", tmp_path / "two")


def assert_same_epochs(one, two) -> None:
    """Two runs' metrics.jsonl: the head fit, then two fine-tune epochs, each written once (rank 0), with the same
    validation figures and training loss."""
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 3
    for a, b in zip(m1, m2):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"])
        if "train_loss" in a:
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_under_torchrun_rank_0_plans_the_budget_for_every_rank(tmp_path):
    data, env = _data_weights_env(tmp_path)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
                          "-m", "headstart", "train", str(data), "--model", "resnet20", "--weights",
                          str(tmp_path / "w.pth"), "--epochs", "2", "--workers", "0", "--budget", "1h",
                          "--precision", "fp32", "--device", "cpu", "--out", str(tmp_path / "two"), "--no-report"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("budget 3600 s") == 1  # planned once, by rank 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "fine-tune" and summary["budget"]["within"]
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 3  # the head, then 2 epochs
