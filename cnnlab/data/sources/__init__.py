"""One module per on-disk format; importing this package registers every data set
in ``cnnlab.registry.DATASETS`` with its loader and facts. A new format is one file
here and one import below."""
from __future__ import annotations

from cnnlab.data.sources import cifar10, idx, imagefolder  # noqa: F401  (registers them)
from cnnlab.registry import DATASETS, DatasetInfo


def dataset_info(name: str) -> DatasetInfo:
    """The facts of a registered data set, without touching any file (unknown names
    raise UnknownName listing the choices)."""
    return DATASETS.get(name).info
