"""Speed-run networks: an airbench-style CIFAR net and a small fast MNIST net.

``airbench`` follows the design of Keller Jordan's cifar10-airbench: a fixed first
convolution whose filters whiten 2×2 image patches (set from the training data's patch
covariance by :func:`init_whitening`, which the trainer calls when the model says
``needs_whitening_init``), then three blocks of conv → max-pool → batch norm → GELU →
conv → batch norm → GELU, a global max-pool, a bias-free linear head and a fixed output
scale. Its batch norms learn only a shift (the scale stays 1), and the frozen parts are
buffers rather than parameters, so ``train.finetune=all`` cannot un-freeze them.
``mnist_fast`` is a two-conv net in the spirit of tuomaso/train_mnist_fast (99 % on MNIST
in one epoch), with optional batch norm and dropout for longer, augmented runs. Both are
plain registry entries, so any study can name them; the speed-run recipes live in
``recipes/speedrun/``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.registry import MODELS, ModelInfo

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
                "sigmoid": nn.Sigmoid, "elu": nn.ELU}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation {name!r} is not one of {', '.join(_ACTIVATIONS)}") from None


# ============================================================================= blocks


class WhiteningConv(nn.Module):
    """A k×k convolution without padding whose filters are a fixed buffer (2·C·k² of them:
    each whitening direction and its negative, so a following GELU keeps both signs) and
    whose bias is learned. Until :func:`init_whitening` runs, the filters are random."""

    def __init__(self, in_channels: int, kernel_size: int = 2):
        super().__init__()
        out = 2 * in_channels * kernel_size * kernel_size
        weight = torch.empty(out, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(weight, a=5 ** 0.5)  # torch's default conv init, as a placeholder
        self.register_buffer("weight", weight)
        self.bias = nn.Parameter(torch.zeros(out))
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


# Batch norm's eps for the speed-run nets. A channel whose batch variance is exactly 0 (on MNIST the
# whitened "background" channel after the identity-initialised convs and three max-pools: every window's
# maximum is the same background value) multiplies the gradient reaching it by 1/sqrt(eps) at each norm.
# With torch's 1e-5 that is 316x per norm, ~1e5 over block 3's two, and the biases' gradients become
# sums of ~36,000 terms of size ~700 that cancel to ~0.01: bf16's 8-bit mantissa leaves ~200 of rounding
# there, the biases jump, the running statistics follow and the eval-mode network scores at chance while
# the training loss looks normal (issue 23: 11 % in bf16 against 40 % in fp32). 1e-3 (Keras' default)
# caps that at 32x per norm; bf16 then trains as fp32 does (BENCHMARKS.md, "Precision"), and against
# activations of variance ~1 it changes nothing else.
NORM_EPS = 1e-3


class ShiftNorm(nn.BatchNorm2d):
    """Batch norm that learns a shift but keeps its scale at 1 (airbench's choice: a learned
    scale before GELU adds little and costs an extra gradient). The scale is simply absent,
    so no freezing policy can turn it back on. ``eps``: :data:`NORM_EPS`."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = NORM_EPS):
        # momentum is torch's (weight of the new batch), i.e. airbench's 0.6 "keep" factor
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))


class IdentityInitConv(nn.Conv2d):
    """3×3 same-padding conv without bias, whose first ``in_channels`` filters start as the
    identity (Dirac) so each block begins close to passing its input through."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            n = min(self.in_channels, self.out_channels)
            nn.init.dirac_(self.weight[:n])


class ConvGroup(nn.Module):
    """conv → max-pool 2 → norm → act → conv → norm → act (the pool sits before the norm so
    the norm and the second conv run at a quarter of the pixels)."""

    def __init__(self, channels_in: int, channels_out: int, activation: str = "gelu"):
        super().__init__()
        self.conv1 = IdentityInitConv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ShiftNorm(channels_out)
        self.conv2 = IdentityInitConv(channels_out, channels_out)
        self.norm2 = ShiftNorm(channels_out)
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


# ============================================================================= network


class AirbenchNet(nn.Module):
    """whiten → act → block1..3 → global max-pool → ``head`` → fixed output ``scale``."""

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int], activation: str = "gelu",
                 whitening_kernel: int = 2, output_scale: float = 1 / 9):
        super().__init__()
        self.whiten = WhiteningConv(in_channels, whitening_kernel)
        self.act = _activation(activation)
        w0 = 2 * in_channels * whitening_kernel ** 2
        self.block1 = ConvGroup(w0, widths[0], activation)
        self.block2 = ConvGroup(widths[0], widths[1], activation)
        self.block3 = ConvGroup(widths[1], widths[2], activation)
        self.pool = nn.AdaptiveMaxPool2d(1)  # airbench's MaxPool2d(3) on its 3×3 map, for any input size
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        # A small fixed output scale keeps early logits (and the softmax) soft: airbench uses 1/9.
        self.scale = Scale(output_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.scale(self.head(torch.flatten(self.pool(x), 1)))


class MnistFastNet(nn.Module):
    """conv5×5 → max-pool → act → conv3×3 → max-pool → act → fc → act → fc, as in the fast MNIST
    record (24 and 32 filters, 256 hidden). The second pool is adaptive to 5×5, which is exactly a
    2× pool at 28 px and lets the same net take 32 px input."""

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int] = (24, 32), hidden: int = 256,
                 activation: str = "relu", batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        c1, c2 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, 5, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(c1) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(c1, c2, 3, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(c2) if batch_norm else nn.Identity()
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.AdaptiveMaxPool2d(5)
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc1 = nn.Linear(c2 * 25, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool1(self.conv1(x))))
        x = self.act(self.bn2(self.pool2(self.conv2(x))))
        x = self.drop(self.act(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


# The whitening filters are data: set from the training images before training.


def _patch_matrix(images: torch.Tensor, k: int) -> torch.Tensor:
    """All k×k patches of ``images`` [N,C,H,W] as rows [N·(H−k+1)·(W−k+1), C·k·k], ordered (c, i, j)
    to match a conv weight's flattening."""
    n, c = images.shape[:2]
    p = images.unfold(2, k, 1).unfold(3, k, 1)  # [N, C, H', W', k, k]
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


@torch.no_grad()
def init_whitening(model: nn.Module, train_images_float: torch.Tensor, eps: float = 5e-4,
                   chunk: int = 1000) -> None:
    """Set the model's whitening filters from the patch covariance of ``train_images_float``
    (normalised float images [N,C,H,W], a few thousand are plenty: airbench uses 5,000).

    Each filter projects a patch onto one eigenvector of the covariance, divided by the square
    root of its eigenvalue (+ ``eps``, which keeps near-empty directions from blowing up), so
    the layer's outputs are decorrelated with unit variance; the negated copies follow.
    Works on any model holding a :class:`WhiteningConv` (found by type) and keeps the buffer's
    memory format (channels_last models are fine)."""
    layers = [m for m in model.modules() if isinstance(m, WhiteningConv)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no WhiteningConv to initialise")
    x = train_images_float.float().contiguous()
    for layer in layers:
        k = layer.kernel_size
        c = layer.weight.shape[1]
        if x.shape[1] != c:
            raise ValueError(f"init_whitening: images have {x.shape[1]} channels, the layer expects {c}")
        d = c * k * k
        # Summed in float64 over chunks: 5,000 CIFAR images give ~4.8 M patches, so one
        # float32 patch matrix (230 MB) is avoided and the covariance stays accurate.
        cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        count = 0
        for start in range(0, len(x), chunk):
            rows = _patch_matrix(x[start:start + chunk], k).double()
            cov += rows.T @ rows
            count += len(rows)
        cov /= max(count, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending order
        order = eigenvalues.argsort(descending=True)
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + eps).sqrt()[:, None]).reshape(d, c, k, k)
        layer.weight.copy_(torch.cat([filters, -filters]).to(layer.weight.dtype))


# ============================================================================= builder


def _widths(width: Optional[int], widths: Optional[Sequence[int]], base_default: int,
            multipliers: Sequence[int], name: str, count: int) -> list[int]:
    if widths is not None:
        if len(widths) != count or any(w < 1 for w in widths):
            raise ValueError(f"{name}: widths must be {count} positive channel counts, got {list(widths)}")
        return list(widths)
    base = width if width is not None else base_default
    return [base * m for m in multipliers]


# ============================================================================= variants


@MODELS.register("airbench", info=ModelInfo(
    family="airbench", head_name="head", stages=("block1", "block2", "block3"),
    min_input_size=9,  # 2×2 whitening (−1 px) then three 2× pools must leave ≥ 1 px
    input_size=32, needs_whitening_init=True))  # the trainer calls init_whitening(model, normalised train images)
def airbench(num_classes: int = 10, in_channels: int = 3, *, width: Optional[int] = None,
             widths: Optional[list[int]] = None, activation: str = "gelu") -> nn.Module:
    """airbench94's network: block widths (1, 4, 4) × ``width`` (default 64 → 64/256/256, about
    2 M parameters) or explicit ``widths``. Speed-run recipes shrink it for CPU budgets."""
    return AirbenchNet(num_classes, in_channels, _widths(width, widths, 64, (1, 4, 4), "airbench", 3), activation)


@MODELS.register("mnist_fast", info=ModelInfo(
    family="airbench", head_name="fc2",
    min_input_size=10,  # 5×5 conv, 2× pool, then the 3×3 conv needs ≥ 3 px
    input_size=28))
def mnist_fast(num_classes: int = 10, in_channels: int = 1, *, width: Optional[int] = None,
               widths: Optional[list[int]] = None, hidden: Optional[list[int]] = None, activation: str = "relu",
               batch_norm: bool = False, dropout: float = 0.0) -> nn.Module:
    """The fast-MNIST record's net (24 / 32 filters, 256 hidden; ~0.2 M parameters). ``width``
    scales both conv widths (8 → 24/32, as the record; 16 → 48/64); ``hidden`` is a one-item list."""
    if widths is None and width is not None:
        widths = [3 * width, 4 * width]
    chosen = _widths(None, widths, 8, (3, 4), "mnist_fast", 2)
    if hidden is not None and len(hidden) != 1:
        raise ValueError(f"mnist_fast: hidden takes one size (the fully connected layer), got {hidden}")
    return MnistFastNet(num_classes, in_channels, chosen, hidden[0] if hidden else 256, activation, batch_norm,
                        dropout)
