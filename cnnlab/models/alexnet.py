"""AlexNet's design scaled to 28×28 and 32×32 images (Study A's "AlexNet adapted to MNIST").

The pattern is Krizhevsky et al.'s: five convolutions with ReLU, local response
normalisation and overlapping 3×3/stride-2 max-pooling after the first two, a third
max-pool after the fifth, then two dropout + fully connected + ReLU layers and the
classifier. What changes for small images: the 11×11/stride-4 first conv becomes 5×5/stride-1
(a stride of 4 would leave a 7×7 map after one layer), the second conv keeps 5×5, and the
hidden FC layers are 1,024 wide instead of 4,096. The channel widths are AlexNet's
(64, 192, 384, 256, 256, as in torchvision's single-GPU version). Spatial sizes: 28 → 13 → 6 → 2
and 32 → 15 → 7 → 3, so FC1 sees 1,024 or 2,304 features; it is lazy (see
``cnnlab.models.mlp``). The full-size, 224-pixel AlexNet is ``alexnet`` (torchvision_zoo).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cnnlab.models.mlp import first_linear
from cnnlab.registry import MODELS, ModelInfo, attach_info

# AlexNet's LRN constants (section 3.3 of the paper); PyTorch's alpha is divided by size.
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)

# ============================================================================= blocks


def conv_relu(c_in: int, c_out: int, kernel: int, lrn: bool, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
    if lrn:
        layers.append(nn.LocalResponseNorm(**LRN))
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2))  # overlapping pooling, as in AlexNet
    return layers


# ============================================================================= network


class AlexNetSmall(nn.Module):
    """features (5 convs) → flatten → hidden (2 × dropout/FC/ReLU) → fc."""

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int], hidden: Sequence[int],
                 dropout: float):
        super().__init__()
        if len(widths) != 5 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be 5 positive channel counts, got {list(widths)}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive sizes, got {list(hidden)}")
        w1, w2, w3, w4, w5 = widths
        self.features = nn.Sequential(
            *conv_relu(in_channels, w1, 5, lrn=True, pool=True),
            *conv_relu(w1, w2, 5, lrn=True, pool=True),
            *conv_relu(w2, w3, 3, lrn=False, pool=False),
            *conv_relu(w3, w4, 3, lrn=False, pool=False),
            *conv_relu(w4, w5, 3, lrn=False, pool=True),
        )
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        prev = None
        for width in hidden:
            layers += [nn.Dropout(dropout), first_linear(width) if prev is None else nn.Linear(prev, width),
                       nn.ReLU(inplace=True)]
            prev = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(self.features(x))))


# ============================================================================= builder

INFO = ModelInfo(family="alexnet", head_name="fc",
                 min_input_size=15)  # 15 → 7 → 3 → 1 through the three 3×3/stride-2 pools


def _create(num_classes: int, in_channels: int, widths: Sequence[int], hidden: Sequence[int],
            dropout: float) -> nn.Module:
    model = AlexNetSmall(num_classes, in_channels, tuple(widths), tuple(hidden), dropout)
    return attach_info(model, INFO.but(input_size=28 if in_channels == 1 else 32))  # MNIST or CIFAR


# ============================================================================= variants


@MODELS.register("alexnet_small", info=INFO)
def alexnet_small(num_classes: int = 10, in_channels: int = 1, *, widths: Sequence[int] = (64, 192, 384, 256, 256),
                  hidden: Sequence[int] = (1024, 1024), dropout: float = 0.5) -> nn.Module:
    """AlexNet for 28/32-pixel images with 1 or 3 channels (4,557,514 parameters on 1×28×28,
    5,871,434 on 3×32×32 with the defaults and 10 classes)."""
    return _create(num_classes, in_channels, widths, hidden, dropout)
