"""The model zoo. Importing this package fills ``cnnlab.registry.MODELS``.

One file per family, each in the same order: blocks, network, builder, variants (the
registered builder functions, named as study files name them). A builder takes
``num_classes`` and ``in_channels`` plus its own keyword options and returns an
``nn.Module``; it is registered with its facts, ``@MODELS.register(info=ModelInfo(...))``,
and the model it builds carries them: :func:`info_of` reads them. Adding a model is one
file here and one name in the import below.
"""
from cnnlab.models import airbench, alexnet, lenet, linear, mlp, resnet_cifar, simple_cnn, torchvision_zoo  # noqa: F401
from cnnlab.registry import MODELS, ModelInfo, info_of  # noqa: F401 - info_of is this package's public name

__all__ = ["MODELS", "ModelInfo", "build_model", "info_of"]


def build_model(name: str, num_classes: int, in_channels: int, **options):
    """The registered builder ``name`` called with its options; the model carries its :class:`ModelInfo`."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **options)
