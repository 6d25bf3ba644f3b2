"""Softmax regression: one linear layer on the flattened input (Study D's raw-input baseline).

It is the MLP with no hidden layer, so its single layer is lazy too: the number of inputs
(784 on MNIST, 3,072 on CIFAR-10) is fixed by the first forward pass. To train a linear
classifier on a network's features instead, keep that network's name and set
``model.features_at`` (see ``cnnlab.models.transfer``).
"""
from __future__ import annotations

from torch import nn

from cnnlab.models.mlp import INFO, MLP
from cnnlab.registry import MODELS


# ============================================================================= variants


@MODELS.register("linear", info=INFO.but(family="linear"))
def linear(num_classes: int = 10, in_channels: int = 1, *, init: str = "default") -> nn.Module:
    """Logits = W·flatten(x) + b; 7,850 parameters on 1×28×28, 30,730 on 3×32×32."""
    return MLP(num_classes, hidden=(), activation="relu", dropout=0.0, init=init)
