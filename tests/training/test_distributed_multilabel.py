"""Multi-label training under torchrun: two Gloo processes fine-tune like one and leave a complete run directory."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from headstart.data.mosaic import make_mosaic_set
from headstart.zoo import create_backbone
from tests.training.test_distributed import assert_same_epochs


def _train(manifest, weights, out, world: int, port: int = 29537):
    """``headstart train`` on the CSV, fine-tuning a ResNet-20 from ``weights``, in ``world`` process(es)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launch = ["-m", "torch.distributed.run", f"--nproc_per_node={world}", f"--master_port={port}"] if world > 1 else []
    batch = str(8 // world)  # the same global batch, so the two runs take the same steps
    cmd = [sys.executable, *launch, "-m", "headstart", "train", str(manifest), "--model", "resnet20", "--weights",
           str(weights), "--strategy", "fine-tune", "--epochs", "2", "--image-size", "32", "--batch-size", batch,
           "--workers", "0", "--augment", "none", "--precision", "fp32", "--device", "cpu", "--no-report",
           "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_two_gloo_processes_fine_tune_a_multilabel_csv_like_one(tmp_path):
    # 50 rows: 40 train (5 global batches of 8, none dropped to even out the ranks), 10 validation, 16 test.
    manifest = make_mosaic_set(tmp_path / "data", train=50, test=16, classes=3, seed=0, split_column=True)
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    _train(manifest, tmp_path / "w.pth", tmp_path / "one", 1)
    two = _train(manifest, tmp_path / "w.pth", tmp_path / "two", 2)
    assert "x 2 processes" in two.stderr

    run = tmp_path / "two"
    for name in ("config.yaml", "split.json", "metrics.jsonl", "summary.json", "test_metrics.json"):
        assert (run / name).is_file(), f"{name} missing from the two-process run"
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["train_images"], summary["val_images"]) == (40, 10)
    assert summary["task"] == "multilabel" and summary["world_size"] == 2
    assert len(summary["decision"]["thresholds"]) == 3
    assert math.isfinite(summary["test_map"]) and 0 <= summary["test_map"] <= 1
    assert json.loads((run / "test_metrics.json").read_text())["map"] == pytest.approx(summary["test_map"])

    assert_same_epochs(tmp_path / "one", run)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert one["test_map"] == pytest.approx(summary["test_map"], abs=1e-3)
