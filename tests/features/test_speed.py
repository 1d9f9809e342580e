"""Extraction speed measured once on this machine and remembered; `headstart models` shows it without torch."""

from __future__ import annotations

import json

import pytest
import torch

from headstart.cli import main
from headstart.core.runtime import Runtime
from headstart.features import speed
from headstart.features.cache import SPEEDS, cpu_model

CPU_FP32 = Runtime(torch.device("cpu"), None, channels_last=True)


def test_a_measured_speed_is_remembered_with_its_conditions(tmp_path, monkeypatch):
    rate = speed.throughput("resnet20", 32, CPU_FP32, root=tmp_path, seconds=0.2)
    assert rate > 0
    [record] = json.loads((tmp_path / SPEEDS).read_text())
    assert record["backbone"] == "resnet20" and record["resolution"] == 32 and record["precision"] == "fp32"
    assert record["machine"] == speed.where() and record["threads"] == torch.get_num_threads()

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(speed, "build_model", no_measuring)
    assert speed.throughput("resnet20", 32, CPU_FP32, root=tmp_path) == record["img_per_s"]
    with pytest.raises(AssertionError, match="measured again"):  # other conditions: a new measurement
        speed.throughput("resnet20", 48, CPU_FP32, root=tmp_path)


def test_models_lists_the_speed_measured_here(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    (tmp_path / SPEEDS).write_text(json.dumps([
        {"backbone": "efficientnet_lite0", "resolution": 224, "machine": cpu_model(), "img_per_s": 123.4},
        {"backbone": "efficientnet_lite0", "resolution": 224, "machine": cpu_model(), "img_per_s": 50.0,
         "work": "extract:observed"},  # a real pass (decoding included): not the backbone's own speed
        {"backbone": "efficientnet_lite1", "resolution": 240, "machine": "another CPU", "img_per_s": 99.0}]))
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["img_per_s"] == 123.4
    assert rows["efficientnet_lite1"]["img_per_s"] is None  # measured elsewhere: not this machine's figure
