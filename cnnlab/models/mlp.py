"""Fully connected networks (Study C's parameter-matched MLP, Study E's 784→512→10), plus
the small layer helpers the other families share (activation by name, weight init by name).

The first layer is an ``nn.LazyLinear``: a builder gets the channel count but not the image
size, so the number of input features (784 for MNIST, 3,072 for CIFAR-10) is fixed by the
first forward pass. Until then the parameter count is unknown; ``cnnlab.models.transfer.build_model``
runs one dummy forward when the image size is known, and ``cnnlab.models.layers.summarize`` does
so in any case, before the optimizer is built. Everything after the first layer has fixed
sizes, so e.g. ``hidden=[64, 64, 64, 32, 16, 16, 10]`` on 1×28×28 input has exactly
61,720 parameters (Study C) and ``hidden=[512]`` has 407,050 (Study E).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from cnnlab.registry import MODELS, ModelInfo, attach_info

# ============================================================================= blocks (shared with the other families)

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, PyTorch's default
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
}
INITS = ("default", "xavier_uniform", "kaiming")


def activation_layer(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}") from None


def check_init(name: str) -> str:
    if name not in INITS:
        raise ValueError(f"init {name!r} is not one of {', '.join(INITS)}")
    return name


def init_layer(module: nn.Module, scheme: str) -> None:
    """Re-initialise one conv or linear layer; "default" keeps PyTorch's own init."""
    if scheme == "default" or not isinstance(module, (nn.Linear, nn.Conv2d)):
        return
    if scheme == "xavier_uniform":
        nn.init.xavier_uniform_(module.weight)
    else:  # kaiming: He et al.'s normal init, suited to ReLU nets
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_weights(model: nn.Module, scheme: str) -> None:
    """Apply ``scheme`` to every materialised layer; lazy layers do it themselves when they
    get their size (see :class:`LazyLinearInit`)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, nn.modules.lazy.LazyModuleMixin):
            init_layer(m, scheme)


class LazyLinearInit(nn.LazyLinear):
    """A LazyLinear whose weights get ``scheme`` as soon as the input size is known.

    PyTorch calls ``reset_parameters`` once the shapes are materialised, which is the
    only moment a non-default init can be applied to a lazy layer.
    """

    def __init__(self, out_features: int, scheme: str = "default", bias: bool = True):
        self.scheme = scheme  # set first: LazyLinear.__init__ already calls reset_parameters
        super().__init__(out_features, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if not self.has_uninitialized_params() and self.in_features != 0:
            init_layer(self, self.scheme)


def first_linear(out_features: int, scheme: str = "default") -> nn.Module:
    """The layer that meets the flattened input, whose size is only known at the first forward."""
    return LazyLinearInit(out_features, scheme)


# ============================================================================= network


class MLP(nn.Module):
    """flatten → (linear → activation → dropout) per hidden size → linear ``fc`` → optional softmax.

    ``dropout_before_act`` puts each dropout between its linear layer and the activation
    (linear → dropout → activation: Study C's order, as its report's layer summary lists it). For
    ReLU the two orders compute the same function with the same random masks (ReLU(0) = 0 and
    ReLU(c·x) = c·ReLU(x) for the 1/(1 − p) scale), so the choice shows in the summary, not in
    the numbers; for tanh or sigmoid it changes the network.
    """

    def __init__(self, num_classes: int, hidden: Sequence[int], activation: str, dropout: float, init: str,
                 dropout_before_act: bool = False, softmax_output: bool = False):
        super().__init__()
        check_init(init)
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        prev = None
        for i, width in enumerate(hidden):
            layers.append(first_linear(width, init) if prev is None else nn.Linear(prev, width))
            act_and_drop = [activation_layer(activation)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            layers += act_and_drop[::-1] if dropout_before_act else act_and_drop
            prev = width
        self.hidden = nn.Sequential(*layers)
        self.fc = first_linear(num_classes, init) if prev is None else nn.Linear(prev, num_classes)
        # Study C's final Softmax (a double softmax under cross_entropy): a module, so it shows in the summary
        self.out = nn.Softmax(dim=1) if softmax_output else nn.Identity()
        init_weights(self, init)

    def forward(self, x):
        return self.out(self.fc(self.hidden(self.flatten(x))))


# ============================================================================= builder

INFO = ModelInfo(family="mlp", head_name="fc", input_size=28)  # any input size: it is flattened


# ============================================================================= variants


@MODELS.register("mlp", info=INFO)
def mlp(num_classes: int = 10, in_channels: int = 1, *, hidden: Sequence[int] = (512,), activation: str = "relu",
        dropout: float = 0.0, init: str = "default", dropout_before_act: bool = False,
        softmax_output: bool = False) -> nn.Module:
    """Study E's 784→512→10 by default; Study C's 61,720-parameter MLP is
    ``hidden=[64, 64, 64, 32, 16, 16, 10], activation=relu, dropout=p``, and as the study ran it
    also ``dropout_before_act=True, softmax_output=True`` (linear → dropout → ReLU per hidden layer,
    then linear 10→10 and a softmax; output_kind "probs")."""
    if any(w < 1 for w in hidden):
        raise ValueError(f"hidden sizes must be positive, got {list(hidden)}")
    model = MLP(num_classes, tuple(hidden), activation, dropout, init, dropout_before_act, softmax_output)
    return attach_info(model, INFO.but(output_kind="probs" if softmax_output else "logits"))
