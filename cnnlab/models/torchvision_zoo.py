"""torchvision's ImageNet networks, sized for this run: AlexNet, VGG-16, ResNet-18/50/101.

The networks are torchvision's own builders (``weights=None``; ImageNet weights are loaded
by ``cnnlab.transfer`` when a study asks for them), changed only where a run needs it:
the classifier gets ``num_classes`` outputs, the first conv takes one channel when the
data are grey (``in_channels=1``), and for ResNets ``stem="cifar"`` swaps the 7×7/stride-2
conv and the max-pool for one 3×3/stride-1 conv, the usual change for 32-pixel images.
With 1,000 classes and 3 channels the parameter counts are torchvision's:
AlexNet 61,100,840; VGG-16 138,357,544; ResNet-18 11,689,512; ResNet-50 25,557,032;
ResNet-101 44,549,160. ``head_name`` is the classifier's last linear layer (``fc`` for
ResNets, ``classifier.6`` for AlexNet/VGG), the layer replaced when the class count differs.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from cnnlab.registry import MODELS

STEMS = ("imagenet", "cifar")
ZOO = ("alexnet", "vgg16", "resnet18", "resnet50", "resnet101")  # the builders below

# --------------------------------------------------------------------------- helpers


def _same_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh conv like ``conv`` but reading ``in_channels`` channels."""
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     bias=conv.bias is not None)


def _tag(model: nn.Module, name: str, *, head_name: str, input_conv: str, stages: tuple, min_input_size: int,
         input_size: int) -> nn.Module:
    model.torchvision_name = name  # which torchvision weights fit (cnnlab.transfer)
    model.head_name = head_name
    model.input_conv = input_conv  # adapted when ImageNet weights meet grey input
    model.stages = stages
    model.min_input_size = min_input_size
    model.input_size = input_size
    model.output_kind = "logits"
    return model


# --------------------------------------------------------------------------- families


def _resnet(name: str, num_classes: int, in_channels: int, stem: str) -> nn.Module:
    if stem not in STEMS:
        raise ValueError(f"stem {stem!r} is not one of {', '.join(STEMS)}")
    from torchvision.models import get_model  # here: importing torchvision costs seconds of start-up

    model = get_model(name, weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _same_conv(model.conv1, in_channels)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    # ResNets end in adaptive pooling and strided convs that accept any size down to 1 pixel.
    return _tag(model, name, head_name="fc", input_conv="conv1", stages=("layer1", "layer2", "layer3", "layer4"),
                min_input_size=1, input_size=32 if stem == "cifar" else 224)


def _plain(name: str, num_classes: int, in_channels: int, dropout: float, min_input_size: int) -> nn.Module:
    # AlexNet and VGG: `features` (convs) → adaptive avg-pool → `classifier` (3 linear layers).
    from torchvision.models import get_model  # here: importing torchvision costs seconds of start-up

    model = get_model(name, weights=None, num_classes=num_classes, dropout=dropout)
    if in_channels != 3:
        model.features[0] = _same_conv(model.features[0], in_channels)
    return _tag(model, name, head_name="classifier.6", input_conv="features.0", stages=(),
                min_input_size=min_input_size, input_size=224)


# --------------------------------------------------------------------------- builders


@MODELS.register("alexnet")
def alexnet(num_classes: int = 10, in_channels: int = 3, *, dropout: float = 0.5) -> nn.Module:
    """torchvision's AlexNet; its 11×11/4 conv and three 3×3/2 pools need at least 63×63 input."""
    return _plain("alexnet", num_classes, in_channels, dropout, min_input_size=63)


@MODELS.register("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, *, dropout: float = 0.5) -> nn.Module:
    """torchvision's VGG-16 (no batch norm); five 2×2 pools need at least 32×32 input."""
    return _plain("vgg16", num_classes, in_channels, dropout, min_input_size=32)


def _resnet_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3, *, stem: str = "imagenet") -> nn.Module:
        return _resnet(name, num_classes, in_channels, stem)

    build.__name__ = name
    build.__doc__ = f"torchvision's {name}; stem='cifar' for 32-pixel images (3×3/1 first conv, no max-pool)."
    return build


resnet18 = MODELS.register("resnet18")(_resnet_builder("resnet18"))
resnet50 = MODELS.register("resnet50")(_resnet_builder("resnet50"))
resnet101 = MODELS.register("resnet101")(_resnet_builder("resnet101"))
