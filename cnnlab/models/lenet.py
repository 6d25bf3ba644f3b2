"""LeNet-5 and its configurable relatives (Studies A, B, C and E).

One network covers them all: a stack of 5×5 convolutions (``widths``), each followed by
optional batch norm and the activation, with a 2×2 pooling after the first two; then
fully connected hidden layers (``hidden``) and the classifier ``fc``. The defaults are the
classic LeNet-5 with its C5 layer written as a 5×5 convolution to 120 channels (Study E's
form): conv 1→6 pad 2, tanh, avg-pool, conv 6→16, tanh, avg-pool, conv 16→120, tanh,
FC 120→84, tanh, FC 84→10. On 1×28×28 input C5 sees a 5×5 map, so it has exactly the
weights of Study C's "FC 400→120" and the net has 61,706 parameters either way.

The first fully connected layer is lazy: its input size depends on the image size, which
a builder is not told (on 3×32×32 the same net flattens 2×2×120 = 480 features). See
``cnnlab.models.mlp`` for how the lazy layer gets its size. ``lenet5_cifar`` is Study B's
CIFAR-10 base net (PyTorch's tutorial net, 62,006 parameters) with its dropout and
BatchNorm1d variants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from cnnlab.models.mlp import activation_layer, check_init, first_linear, init_weights
from cnnlab.registry import MODELS, ModelInfo, attach_info

POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
POOLED_CONVS = 2  # LeNet pools after C1 and C3 only; C5 maps straight to the classifier

# ============================================================================= blocks


def conv_block(c_in: int, c_out: int, padding: int, batch_norm: bool, activation: str,
               pooling: str | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=5, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(activation_layer(activation))
    if pooling is not None:
        layers.append(POOLS[pooling](kernel_size=2, stride=2))
    return layers


def fc_block(c_in: int | None, c_out: int, batch_norm: bool, activation: str, dropout: float,
             init: str) -> list[nn.Module]:
    # c_in None = the first FC layer, which meets the flattened conv output (size known later)
    layers: list[nn.Module] = [first_linear(c_out, init) if c_in is None else nn.Linear(c_in, c_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(c_out))
    layers.append(activation_layer(activation))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


# ============================================================================= network


@dataclass(frozen=True)
class LeNetShape:
    """The options a LeNet variant is built from (the builders' keyword arguments)."""

    widths: Sequence[int]
    hidden: Sequence[int]
    activation: str
    pooling: str
    padding: int
    batch_norm: bool
    fc_dropout: Sequence[float]
    fc_batch_norm: bool
    softmax_output: bool
    init: str


class LeNet(nn.Module):
    """features (convs) → flatten → hidden (FCs) → fc → optional softmax."""

    def __init__(self, num_classes: int, in_channels: int, shape: LeNetShape):
        super().__init__()
        widths, hidden, activation, pooling, padding = (shape.widths, shape.hidden, shape.activation,
                                                        shape.pooling, shape.padding)
        batch_norm, fc_dropout, init = shape.batch_norm, shape.fc_dropout, shape.init
        if pooling not in POOLS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLS)}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive channel counts, got {list(widths)}")
        check_init(init)
        convs: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            convs += conv_block(prev, width, padding if i == 0 else 0, batch_norm, activation,
                                pooling if i < POOLED_CONVS else None)
            prev = width
        self.features = nn.Sequential(*convs)
        self.flatten = nn.Flatten()
        fcs: list[nn.Module] = []
        prev_fc = None
        for i, width in enumerate(hidden):
            fcs += fc_block(prev_fc, width, shape.fc_batch_norm, activation, fc_dropout[i] if i < len(fc_dropout) else 0.0,
                            init)
            prev_fc = width
        self.hidden = nn.Sequential(*fcs)
        self.fc = first_linear(num_classes, init) if prev_fc is None else nn.Linear(prev_fc, num_classes)
        # Study A/E's "softmax in forward()": kept as a module so it shows in the summary.
        self.out = nn.Softmax(dim=1) if shape.softmax_output else nn.Identity()
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.hidden(self.flatten(self.features(x)))))


# ============================================================================= builder

INFO = ModelInfo(family="lenet", head_name="fc")


def _min_size(n_convs: int, padding: int) -> int:
    """Smallest square input for which every 5×5 conv and 2×2 pool has something to work on."""
    size = 1
    for i in reversed(range(n_convs)):
        if i < POOLED_CONVS:
            size *= 2
        size += 4 - (2 * padding if i == 0 else 0)
    return max(size, 1)


def _create(num_classes: int, in_channels: int, **options) -> nn.Module:
    """A :class:`LeNet` with the facts its options decide: the output kind, the smallest input."""
    model = LeNet(num_classes, in_channels, LeNetShape(**options))
    return attach_info(model, INFO.but(
        output_kind="probs" if options["softmax_output"] else "logits",
        min_input_size=_min_size(len(options["widths"]), options["padding"]),
        input_size=28 if in_channels == 1 else 32))  # MNIST or CIFAR


# ============================================================================= variants


@MODELS.register("lenet5", info=INFO.but(min_input_size=_min_size(3, 2)))
def lenet5(num_classes: int = 10, in_channels: int = 1, *, activation: str = "tanh", pooling: str = "avg",
           widths: Sequence[int] = (6, 16, 120), hidden: Sequence[int] = (84,), batch_norm: bool = False,
           dropout: float = 0.0, softmax_output: bool = False, init: str = "default") -> nn.Module:
    """Classic LeNet-5 (61,706 parameters on MNIST), configurable as in Study E.

    ``batch_norm`` adds BatchNorm2d after each conv; ``dropout`` is applied after the first
    FC layer; ``softmax_output`` ends forward() in a softmax (output_kind "probs").
    Two widths give the two-conv form with ``hidden`` doing all the FC work
    (e.g. ``widths=[6, 16], hidden=[120, 84]``).
    """
    return _create(num_classes, in_channels, widths=tuple(widths), hidden=tuple(hidden), activation=activation,
                   pooling=pooling, padding=2, batch_norm=batch_norm, fc_dropout=(dropout,), fc_batch_norm=False,
                   softmax_output=softmax_output, init=init)


LENET_CIFAR_VARIANTS = ("base", "dropout", "batchnorm")


@MODELS.register("lenet5_cifar", info=INFO.but(min_input_size=_min_size(2, 0)))
def lenet5_cifar(num_classes: int = 10, in_channels: int = 3, *, variant: str = "base", dropout: float = 0.4,
                 activation: str = "relu", pooling: str = "max") -> nn.Module:
    """Study B's CIFAR-10 base CNN: conv 3→6 5×5, pool, conv 6→16 5×5, pool, FC 120, FC 84, FC 10
    (no padding; 62,006 parameters on 3×32×32). ``variant``: ``dropout`` puts Dropout(``dropout``)
    after both hidden FC layers; ``batchnorm`` puts BatchNorm1d before their activations."""
    if variant not in LENET_CIFAR_VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(LENET_CIFAR_VARIANTS)}")
    p = dropout if variant == "dropout" else 0.0
    return _create(num_classes, in_channels, widths=(6, 16), hidden=(120, 84), activation=activation,
                   pooling=pooling, padding=0, batch_norm=False, fc_dropout=(p, p),
                   fc_batch_norm=variant == "batchnorm", softmax_output=False, init="default")
