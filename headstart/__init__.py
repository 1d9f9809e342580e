"""headstart: transfer learning for image classification.

The library in five names: :func:`build_model` (a pretrained backbone with a new head), :func:`make_strategy`
(which layers train, at what rate), :func:`train` (a folder of images to a run directory), :func:`load_run` and
:func:`predict_paths` (use the result). The classic ResNet recipe is :func:`load_pretrained_resnet`,
:func:`freeze_pretrained_layers` and :func:`fine_tune_resnet`.
"""

from headstart.inference import load_run, predict_paths
from headstart.model import TransferModel, build_model
from headstart.resnet_transfer import fine_tune_resnet, freeze_pretrained_layers, load_pretrained_resnet
from headstart.strategy import Phase, Strategy, make_strategy
from headstart.train import TrainConfig, train
from headstart.zoo import create_backbone, get_spec, list_specs

__version__ = "0.1.0"
__all__ = ["Phase", "Strategy", "TrainConfig", "TransferModel", "build_model", "create_backbone",
           "fine_tune_resnet", "freeze_pretrained_layers", "get_spec", "list_specs", "load_pretrained_resnet",
           "load_run", "make_strategy", "predict_paths", "train"]
