"""torchvision's ImageNet networks, sized for this run: AlexNet, VGG-16, ResNet-18/50/101.

The networks are torchvision's own builders (``weights=None``; ImageNet weights are loaded
by ``cnnlab.models.transfer`` when a study asks for them), changed only where a run needs it:
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

from cnnlab.registry import MODELS, ModelInfo, attach_info

STEMS = ("imagenet", "cifar")
ZOO = ("alexnet", "vgg16", "resnet18", "resnet50", "resnet101")  # the builders below

# ============================================================================= blocks


def _same_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh conv like ``conv`` but reading ``in_channels`` channels."""
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     bias=conv.bias is not None)


# ============================================================================= network
# torchvision's own classes (torchvision.models.ResNet, AlexNet, VGG), built by name.


# ============================================================================= builder

# ResNets end in adaptive pooling and strided convs that accept any size down to 1 pixel.
RESNET = ModelInfo(family="torchvision_zoo", head_name="fc", input_conv="conv1",
                   stages=("layer1", "layer2", "layer3", "layer4"), input_size=224)
# AlexNet and VGG: `features` (convs) → adaptive avg-pool → `classifier` (3 linear layers).
PLAIN = ModelInfo(family="torchvision_zoo", head_name="classifier.6", input_conv="features.0", input_size=224)


def _resnet(name: str, num_classes: int, in_channels: int, stem: str) -> nn.Module:
    if stem not in STEMS:
        raise ValueError(f"stem {stem!r} is not one of {', '.join(STEMS)}")
    import torchvision  # here, not at the top: importing it costs about a second at start-up

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _same_conv(model.conv1, in_channels)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return attach_info(model, RESNET.but(torchvision_name=name, input_size=32 if stem == "cifar" else 224))


def _plain(name: str, num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, dropout=dropout)
    if in_channels != 3:
        model.features[0] = _same_conv(model.features[0], in_channels)
    return model


def _resnet_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3, *, stem: str = "imagenet") -> nn.Module:
        return _resnet(name, num_classes, in_channels, stem)

    build.__name__ = name
    build.__doc__ = f"torchvision's {name}; stem='cifar' for 32-pixel images (3×3/1 first conv, no max-pool)."
    return build


# ============================================================================= variants


@MODELS.register("alexnet", info=PLAIN.but(torchvision_name="alexnet", min_input_size=63))
def alexnet(num_classes: int = 10, in_channels: int = 3, *, dropout: float = 0.5) -> nn.Module:
    """torchvision's AlexNet; its 11×11/4 conv and three 3×3/2 pools need at least 63×63 input."""
    return _plain("alexnet", num_classes, in_channels, dropout)


@MODELS.register("vgg16", info=PLAIN.but(torchvision_name="vgg16", min_input_size=32))
def vgg16(num_classes: int = 10, in_channels: int = 3, *, dropout: float = 0.5) -> nn.Module:
    """torchvision's VGG-16 (no batch norm); five 2×2 pools need at least 32×32 input."""
    return _plain("vgg16", num_classes, in_channels, dropout)


resnet18 = MODELS.register("resnet18", info=RESNET.but(torchvision_name="resnet18"))(_resnet_builder("resnet18"))
resnet50 = MODELS.register("resnet50", info=RESNET.but(torchvision_name="resnet50"))(_resnet_builder("resnet50"))
resnet101 = MODELS.register("resnet101", info=RESNET.but(torchvision_name="resnet101"))(_resnet_builder("resnet101"))
