"""The model zoo. Importing this package fills ``cnnlab.registry.MODELS``.

One file per family; each ends with its registered builders. A builder takes
``num_classes`` and ``in_channels`` plus its own keyword options and returns an
``nn.Module`` (see docs/CONTRACTS.md for the attributes the trainer reads).
"""
import importlib

from cnnlab.registry import MODELS

# Families are imported by name so a family file that is missing (while being written) is skipped loudly.
FAMILIES = ["mlp", "lenet", "simple_cnn", "alexnet", "resnet_cifar", "torchvision_zoo", "linear", "airbench"]
for _family in FAMILIES:
    try:
        importlib.import_module(f"cnnlab.models.{_family}")
    except ModuleNotFoundError as e:
        if e.name != f"cnnlab.models.{_family}":
            raise


def build_model(name: str, num_classes: int, in_channels: int, **options):
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **options)
