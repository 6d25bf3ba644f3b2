"""The model zoo. Importing this package fills ``cnnlab.registry.MODELS``.

One file per family; each ends with its registered builders. A builder takes
``num_classes`` and ``in_channels`` plus its own keyword options and returns an
``nn.Module`` (see docs/CONTRACTS.md for the attributes the trainer reads).
"""
from cnnlab.models import airbench, alexnet, lenet, linear, mlp, resnet_cifar, simple_cnn, torchvision_zoo  # noqa: F401
from cnnlab.registry import MODELS


def build_model(name: str, num_classes: int, in_channels: int, **options):
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **options)
