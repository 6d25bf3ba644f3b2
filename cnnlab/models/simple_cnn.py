"""Study B's MNIST base CNN and its four variants.

The base net is PyTorch's MNIST example: conv 1→32 3×3, ReLU, conv 32→64 3×3, ReLU,
max-pool 2, flatten, FC→128, ReLU, FC→10, log-softmax (train it with the ``nll`` loss;
output_kind "log_probs"). 1,199,882 parameters on 1×28×28. The variants change one thing:

- ``dropout``: three Dropout(p) layers: after the first conv's ReLU, after the pooling and
  after FC1's ReLU (p = ``dropout``, 0.4 in the study);
- ``batchnorm``: two BatchNorm1d layers: on the flattened conv features and on FC1's output;
- ``stride2``: the second conv has stride 2 and there is no max-pool;
- ``kernel5``: both convs use 5×5 kernels.

FC1's input size depends on the image size, so it is a lazy layer (see ``cnnlab.models.mlp``);
so is the BatchNorm1d in front of it.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.mlp import first_linear
from cnnlab.registry import MODELS, ModelInfo, attach_info

VARIANTS = ("base", "dropout", "batchnorm", "stride2", "kernel5")

# ============================================================================= network


class MnistCNN(nn.Module):
    """features (convs) → flatten → hidden (FC1) → fc → log-softmax."""

    def __init__(self, num_classes: int, in_channels: int, variant: str, dropout: float):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        k = 5 if variant == "kernel5" else 3
        drop = variant == "dropout"
        features: list[nn.Module] = [nn.Conv2d(in_channels, 32, k), nn.ReLU()]
        if drop:
            features.append(nn.Dropout(dropout))
        if variant == "stride2":
            features += [nn.Conv2d(32, 64, k, stride=2), nn.ReLU()]
        else:
            features += [nn.Conv2d(32, 64, k), nn.ReLU(), nn.MaxPool2d(2)]
        if drop:
            features.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*features)
        self.flatten = nn.Flatten()
        hidden: list[nn.Module] = []
        if variant == "batchnorm":
            hidden.append(nn.LazyBatchNorm1d())
        hidden.append(first_linear(128))
        if variant == "batchnorm":
            hidden.append(nn.BatchNorm1d(128))
        hidden.append(nn.ReLU())
        if drop:
            hidden.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*hidden)
        self.fc = nn.Linear(128, num_classes)
        self.out = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.hidden(self.flatten(self.features(x)))))


# ============================================================================= builder

INFO = ModelInfo(family="simple_cnn", head_name="fc", output_kind="log_probs", input_size=28)


def _min_size(variant: str) -> int:
    # two k×k convs then a 2×2 pool need 2k pixels; with the stride-2 conv, k + 2 do
    k = 5 if variant == "kernel5" else 3
    return k + 2 if variant == "stride2" else 2 * k


# ============================================================================= variants


@MODELS.register("mnist_cnn", info=INFO.but(min_input_size=_min_size("base")))
def mnist_cnn(num_classes: int = 10, in_channels: int = 1, *, variant: str = "base",
              dropout: float = 0.4) -> nn.Module:
    """Study B's MNIST CNN; ``variant`` is one of base, dropout, batchnorm, stride2, kernel5."""
    model = MnistCNN(num_classes, in_channels, variant, dropout)
    return attach_info(model, INFO.but(min_input_size=_min_size(variant)))
