"""torchrun past training: two Gloo processes check, extract and evaluate like one, and share the cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from headstart.features.cache import FeatureCache, namespaces
from headstart.zoo import create_backbone
from tests.conftest import make_class_folder


def cached_rows(root) -> dict:
    """content hash -> feature row, over every namespace under ``root``."""
    out = {}
    for ns in namespaces(root):
        cache = FeatureCache(json.loads(open(f"{ns['dir']}/key.json").read()), root)
        out.update(zip(cache.keys(), cache.read(cache.keys())))
    return out


def headstart(args, cache, world: int = 1, port: int = 29531, ok=(0, 1)):
    """Runs the CLI (under torchrun for ``world`` > 1); ``check`` answers 1 when it finds something."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEADSTART_CACHE": str(cache)}
    env.pop("WORLD_SIZE", None)
    launch = ["-m", "torch.distributed.run", f"--nproc_per_node={world}", f"--master_port={port}"] if world > 1 else []
    done = subprocess.run([sys.executable, *launch, "-m", "headstart", *args], env=env, capture_output=True, text=True)
    assert done.returncode in ok, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_two_gloo_processes_write_the_cache_rows_of_one(tmp_path):
    data = make_class_folder(tmp_path / "d" / "train", per_class=10, size=32)
    make_class_folder(tmp_path / "d" / "test", per_class=4, size=32, seed=3)
    torch.manual_seed(0)
    backbone, _, _ = create_backbone("resnet20", pretrained=False)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    train = ["train", str(data), "--model", "resnet20", "--weights", str(tmp_path / "w.pth"), "--strategy",
             "linear-probe", "--workers", "0", "--precision", "fp32", "--device", "cpu"]
    for world in (1, 2):  # the one-process run also scores the test images: evaluate's reference below
        headstart([*train, "--out", str(tmp_path / f"run{world}")], tmp_path / f"cache{world}", world, ok=(0,))
    one, two = cached_rows(tmp_path / "cache1"), cached_rows(tmp_path / "cache2")
    assert len(one) == 30 and sorted(one) == sorted(two)
    np.testing.assert_allclose(np.stack([two[k] for k in one]), np.stack(list(one.values())), rtol=1e-4, atol=1e-5)

    checks = [json.loads(headstart(["check", str(data), "--json"], tmp_path / "cache1", w).stdout) for w in (1, 2)]
    assert [{k: v for k, v in c.items() if k != "seconds"} for c in checks][0] == \
        {k: v for k, v in checks[1].items() if k != "seconds"}
    test = tmp_path / "d" / "test"
    score = json.loads(headstart(["evaluate", str(tmp_path / "run1"), str(test), "--json"], tmp_path / "cache3",
                                 2).stdout)
    assert score["num_images"] == 12
    assert score["accuracy"] == json.loads(headstart(["evaluate", str(tmp_path / "run1"), str(test), "--json"],
                                                     tmp_path / "cache1").stdout)["accuracy"]
