"""The CIFAR-10 ResNets of He et al. 2016 (section 4.2): ResNet-20/32/44/56/110.

A 3×3 conv to 16 channels, then three stages of n basic blocks with 16, 32 and 64
channels (the second and third start with stride 2), global average pooling and the
classifier: 6n + 2 weighted layers. Shortcuts follow the paper's option A, which adds
no parameters: where a block halves the map and doubles the channels, the shortcut takes
every other pixel and pads the new channels with zeros. ``variant="B"`` uses 1×1
projection convs (+ batch norm) there instead, as many re-implementations do.
Parameters with 10 classes (option A): 269,722 / 464,154 / 658,586 / 853,018 / 1,727,962,
the paper's 0.27M / 0.46M / 0.66M / 0.85M / 1.7M; option B adds 2,752.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.registry import MODELS, ModelInfo

STAGE_WIDTHS = (16, 32, 64)

# ============================================================================= blocks


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the extra channels (half on each side)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = c_out - c_in
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


def shortcut(c_in: int, c_out: int, stride: int, option: str) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if option == "A":
        return PadShortcut(c_in, c_out, stride)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, option: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride, option)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


# ============================================================================= network


class CifarResNet(nn.Module):
    """conv1/bn1/relu → layer1..3 → pool → flatten → fc; children in forward order."""

    def __init__(self, num_classes: int, in_channels: int, blocks_per_stage: int, option: str):
        super().__init__()
        if option not in ("A", "B"):
            raise ValueError(f"variant {option!r} is not one of A (zero-padding shortcuts), B (projections)")
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        prev = STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            blocks = [BasicBlock(prev if b == 0 else width, width, 2 if (b == 0 and i > 0) else 1, option)
                      for b in range(blocks_per_stage)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            prev = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init, the paper's choice
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


# ============================================================================= builder

# Strided convs and adaptive pooling take any input down to 1 pixel.
INFO = ModelInfo(family="resnet_cifar", head_name="fc", stages=("layer1", "layer2", "layer3"), input_conv="conv1",
                 input_size=32)


def _resnet(depth: int, num_classes: int, in_channels: int, variant: str) -> nn.Module:
    return CifarResNet(num_classes, in_channels, (depth - 2) // 6, variant)


# ============================================================================= variants


@MODELS.register("resnet20", info=INFO)
def resnet20(num_classes: int = 10, in_channels: int = 3, *, variant: str = "A") -> nn.Module:
    return _resnet(20, num_classes, in_channels, variant)


@MODELS.register("resnet32", info=INFO)
def resnet32(num_classes: int = 10, in_channels: int = 3, *, variant: str = "A") -> nn.Module:
    return _resnet(32, num_classes, in_channels, variant)


@MODELS.register("resnet44", info=INFO)
def resnet44(num_classes: int = 10, in_channels: int = 3, *, variant: str = "A") -> nn.Module:
    return _resnet(44, num_classes, in_channels, variant)


@MODELS.register("resnet56", info=INFO)
def resnet56(num_classes: int = 10, in_channels: int = 3, *, variant: str = "A") -> nn.Module:
    return _resnet(56, num_classes, in_channels, variant)


@MODELS.register("resnet110", info=INFO)
def resnet110(num_classes: int = 10, in_channels: int = 3, *, variant: str = "A") -> nn.Module:
    return _resnet(110, num_classes, in_channels, variant)
