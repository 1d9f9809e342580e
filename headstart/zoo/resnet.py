"""Residual networks built from their blocks, for headstart's model zoo.

Two families live here:

* ``ResNet`` -- the ImageNet layout of He et al. (2016), with torchvision's parameter and buffer names, so a
  torchvision ``resnet18/34/50/101/152`` state_dict loads into it with ``strict=True`` and gives the same logits.
* ``CifarResNet`` -- the small-image layout from the same paper (section 4.2): a 3x3 stem, no max-pool and three
  stages of 16/32/64 channels, for inputs of about 32x32.

Both blocks take a ``shortcut`` flag. With ``shortcut=False`` the skip connection is removed entirely, which turns
the network into the "plain" baseline the paper uses to show the degradation problem.

The module is pure torch on purpose: nothing from headstart is imported, so the rest of the package can depend on
it without cycles.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

__all__ = [
    "ResidualBlock",
    "Bottleneck",
    "ResNet",
    "CifarResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet20",
    "resnet32",
    "resnet56",
    "BUILDERS",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that always follows has its own shift, so a conv bias would be redundant.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # A Sequential (not a custom module) so the keys are downsample.0.* / downsample.1.* as in torchvision.
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class ResidualBlock(nn.Module):
    """Basic residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity when input and output shapes match, and a projection (1x1 conv with the block's
    stride, then BN) when the stride or the channel count changes.

    Args:
        inplanes: Number of input channels.
        planes: Number of output channels (``expansion`` is 1, so this is also the block's output width).
        stride: Stride of the first 3x3 conv; 2 halves the spatial size.
        shortcut: If False, drop the skip connection entirely (identity *and* projection), giving a plain block.
    """

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut
        out_planes = planes * self.expansion
        needs_projection = shortcut and (stride != 1 or inplanes != out_planes)
        # None rather than nn.Identity keeps the state_dict free of extra keys, matching torchvision.
        self.downsample: nn.Module | None = _projection(inplanes, out_planes, stride) if needs_projection else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """Bottleneck residual block: 1x1 (reduce) -> 3x3 -> 1x1 (expand by 4), plus the shortcut, then ReLU.

    The stride sits on the 3x3 conv, as in torchvision's "ResNet v1.5", rather than on the first 1x1 as in the
    original paper; that is what makes torchvision's weights load with identical logits.

    Args:
        inplanes: Number of input channels.
        planes: Width of the inner 3x3 conv; the block outputs ``planes * expansion`` channels.
        stride: Stride of the 3x3 conv; 2 halves the spatial size.
        shortcut: If False, drop the skip connection entirely (identity *and* projection), giving a plain block.
    """

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut
        needs_projection = shortcut and (stride != 1 or inplanes != out_planes)
        self.downsample: nn.Module | None = _projection(inplanes, out_planes, stride) if needs_projection else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = Union[type[ResidualBlock], type[Bottleneck]]


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    # torchvision's scheme; kept identical so freshly built models behave like torchvision's weights=None ones.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        # Zeroing the last BN of each residual branch makes every block start as the identity (Goyal et al. 2017).
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.constant_(m.bn3.weight, 0)
            elif isinstance(m, ResidualBlock):
                nn.init.constant_(m.bn2.weight, 0)


def _check_zero_init(zero_init_residual: bool, shortcut: bool) -> None:
    if zero_init_residual and not shortcut:
        # Without a skip, a zeroed last BN makes every block output relu(0) = 0 and the network output constant.
        raise ValueError("zero_init_residual=True requires shortcut=True: a plain network would output a constant")


class _ResNetBase(nn.Module):
    """The small interface the rest of headstart relies on, shared by both ResNet families."""

    fc: nn.Module
    num_features: int
    num_classes: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def layer_groups(self) -> list[list[str]]:
        raise NotImplementedError

    def forward_head(self, feats: Tensor) -> Tensor:
        """Map pooled features to logits.

        Args:
            feats: ``(B, num_features)`` tensor from :meth:`forward_features`.
        """
        return self.fc(feats)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one.

        Args:
            num_classes: Number of outputs of the new ``fc``; 0 makes ``fc`` an ``nn.Identity``, so the model
                returns the pooled ``(B, num_features)`` features.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        # Create on the old head's device/dtype so resetting a model that was already moved doesn't break it.
        ref = next(self.parameters(), None)
        factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.fc = nn.Linear(self.num_features, num_classes, **factory) if num_classes > 0 else nn.Identity()


class ResNet(_ResNetBase):
    """ImageNet-layout ResNet with torchvision's parameter and buffer names.

    Layout: 7x7/2 conv stem, BN, ReLU, 3x3/2 max-pool, four stages (64/128/256/512 base widths, the last three
    starting with stride 2), global average pool, ``fc``. A torchvision ``resnetXX`` state_dict loads with
    ``strict=True`` when the depth matches and ``shortcut=True``.

    Args:
        block: ``ResidualBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50/101/152).
        layers: Number of blocks in each of the four stages, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: Outputs of ``fc``; 0 gives an ``nn.Identity`` head.
        zero_init_residual: Zero the last BN weight in every block so each block starts as the identity.
        shortcut: If False, build the plain (no skip connection) counterpart of the same depth.
        in_chans: Number of input channels of the stem.
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        shortcut: bool = True,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet expects 4 stage sizes, got {len(layers)}: {list(layers)}")
        _check_zero_init(zero_init_residual, shortcut)
        self.shortcut = shortcut
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self, zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        # Only the first block of a stage changes shape; the rest keep it, so they get identity shortcuts.
        stage = [block(self.inplanes, planes, stride, shortcut=self.shortcut)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, shortcut=self.shortcut) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the network up to and including global pooling.

        Args:
            x: ``(B, in_chans, H, W)`` images.

        Returns:
            ``(B, num_features)`` pooled features.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def layer_groups(self) -> list[list[str]]:
        """Ordered groups of top-level child-module names, from input to output: stem, four stages, head.

        Used for layer-wise learning rates and gradual unfreezing; together the groups own every parameter.
        """
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"], ["fc"]]


class CifarResNet(_ResNetBase):
    """Small-image ResNet in the CIFAR-10 layout of He et al. (2016), section 4.2.

    Layout: 3x3 conv stem with 16 channels, BN, ReLU (no max-pool), three stages of ``n = (depth - 2) / 6``
    basic blocks with 16/32/64 channels (the last two starting with stride 2), global average pool, ``fc``.
    Shape-changing shortcuts are projections (1x1 conv + BN, the paper's option B), so ``depth = 6n + 2``.

    Args:
        depth: Total number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: Outputs of ``fc``; 0 gives an ``nn.Identity`` head.
        shortcut: If False, build the plain (no skip connection) counterpart of the same depth.
        in_chans: Number of input channels of the stem (e.g. 1 for greyscale images).
        zero_init_residual: Zero the last BN weight in every block so each block starts as the identity.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        shortcut: bool = True,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CifarResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 44, 56, 110), got depth={depth}"
            )
        _check_zero_init(zero_init_residual, shortcut)
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut = shortcut
        self.inplanes = 16
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 64
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        stage = [ResidualBlock(self.inplanes, planes, stride, shortcut=self.shortcut)]
        self.inplanes = planes
        stage += [ResidualBlock(planes, planes, shortcut=self.shortcut) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the network up to and including global pooling.

        Args:
            x: ``(B, in_chans, H, W)`` images, typically 32x32.

        Returns:
            ``(B, 64)`` pooled features.
        """
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def layer_groups(self) -> list[list[str]]:
        """Ordered groups of top-level child-module names, from input to output: stem, three stages, head."""
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["fc"]]


# -- builders ------------------------------------------------------------------------------------------------------


def resnet18(num_classes: int = 1000, shortcut: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks, [2, 2, 2, 2]).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 18-layer counterpart.
        **kwargs: Passed to :class:`ResNet` (``zero_init_residual``, ``in_chans``).
    """
    return ResNet(ResidualBlock, [2, 2, 2, 2], num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet34(num_classes: int = 1000, shortcut: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-34 (basic blocks, [3, 4, 6, 3]).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 34-layer counterpart.
        **kwargs: Passed to :class:`ResNet` (``zero_init_residual``, ``in_chans``).
    """
    return ResNet(ResidualBlock, [3, 4, 6, 3], num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet50(num_classes: int = 1000, shortcut: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-50 (bottleneck blocks, [3, 4, 6, 3]).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 50-layer counterpart.
        **kwargs: Passed to :class:`ResNet` (``zero_init_residual``, ``in_chans``).
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet101(num_classes: int = 1000, shortcut: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-101 (bottleneck blocks, [3, 4, 23, 3]).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 101-layer counterpart.
        **kwargs: Passed to :class:`ResNet` (``zero_init_residual``, ``in_chans``).
    """
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet152(num_classes: int = 1000, shortcut: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-152 (bottleneck blocks, [3, 8, 36, 3]).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 152-layer counterpart.
        **kwargs: Passed to :class:`ResNet` (``zero_init_residual``, ``in_chans``).
    """
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet20(num_classes: int = 10, shortcut: bool = True, **kwargs: Any) -> CifarResNet:
    """CIFAR-layout ResNet-20 (3 blocks per stage).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 20-layer counterpart.
        **kwargs: Passed to :class:`CifarResNet` (``in_chans``, ``zero_init_residual``).
    """
    return CifarResNet(20, num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet32(num_classes: int = 10, shortcut: bool = True, **kwargs: Any) -> CifarResNet:
    """CIFAR-layout ResNet-32 (5 blocks per stage).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 32-layer counterpart.
        **kwargs: Passed to :class:`CifarResNet` (``in_chans``, ``zero_init_residual``).
    """
    return CifarResNet(32, num_classes=num_classes, shortcut=shortcut, **kwargs)


def resnet56(num_classes: int = 10, shortcut: bool = True, **kwargs: Any) -> CifarResNet:
    """CIFAR-layout ResNet-56 (9 blocks per stage).

    Args:
        num_classes: Outputs of the classifier.
        shortcut: False builds the plain 56-layer counterpart.
        **kwargs: Passed to :class:`CifarResNet` (``in_chans``, ``zero_init_residual``).
    """
    return CifarResNet(56, num_classes=num_classes, shortcut=shortcut, **kwargs)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
}
