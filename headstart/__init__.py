"""headstart: transfer learning for image classification.

The library in five names: :func:`build_model` (a pretrained backbone with a new head), :func:`make_strategy`
(which layers train, at what rate), :func:`train` (a folder of images to a run directory), :func:`load_run` and
:func:`predict_paths` (use the result). The classic ResNet recipe is :func:`load_pretrained_resnet`,
:func:`freeze_pretrained_layers` and :func:`fine_tune_resnet`. :class:`RunDir` reads and writes a run's files.

The names are imported on first use, so ``import headstart`` (and ``headstart --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "load_run": "headstart.predict.run", "predict_paths": "headstart.predict.run", "LoadedRun": "headstart.predict.run",
    "TransferModel": "headstart.zoo.model", "build_model": "headstart.zoo.model",
    "fine_tune_resnet": "headstart.training.resnet_transfer",
    "freeze_pretrained_layers": "headstart.training.resnet_transfer",
    "load_pretrained_resnet": "headstart.training.resnet_transfer",
    "Phase": "headstart.training.strategy", "Strategy": "headstart.training.strategy",
    "make_strategy": "headstart.training.strategy",
    "TrainConfig": "headstart.training.config", "train": "headstart.training.train",
    "create_backbone": "headstart.zoo", "get_spec": "headstart.zoo", "list_specs": "headstart.zoo",
    "RunDir": "headstart.data.rundir", "Preprocessing": "headstart.core.preprocessing",
    "HeadstartError": "headstart.core.errors",
}
__all__ = ["HeadstartError", "LoadedRun", "Phase", "Preprocessing", "RunDir", "Strategy", "TrainConfig",  # noqa: RUF022
           "TransferModel", "build_model", "create_backbone", "fine_tune_resnet", "freeze_pretrained_layers",
           "get_spec", "list_specs", "load_pretrained_resnet", "load_run", "make_strategy", "predict_paths", "train"]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headstart' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:
    from headstart.core.errors import HeadstartError
    from headstart.core.preprocessing import Preprocessing
    from headstart.data.rundir import RunDir
    from headstart.predict.run import LoadedRun, load_run, predict_paths
    from headstart.training.config import TrainConfig
    from headstart.training.resnet_transfer import fine_tune_resnet, freeze_pretrained_layers, load_pretrained_resnet
    from headstart.training.strategy import Phase, Strategy, make_strategy
    from headstart.training.train import train
    from headstart.zoo import create_backbone, get_spec, list_specs
    from headstart.zoo.model import TransferModel, build_model
