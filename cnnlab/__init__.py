"""cnnlab: image-classification studies on small data sets, from one study file.

The Python API (nothing heavy is imported until it is used)::

    import cnnlab
    run = cnnlab.train("recipes/quickstart_lenet5_mnist.yaml", {"train.epochs": 1}, out="runs/nb")
    model = cnnlab.load(run.dir)            # .model, .classes, .input_shape, .transform
    model.predict(["digit.png"])            # top-k classes with probabilities
    cnnlab.sweep("recipes/sweeps/x.yaml"); cnnlab.compare("sweeps/x", by="optim.lr")

``cnnlab.train``, ``cnnlab.sweep`` and ``cnnlab.compare`` are also the names of modules
(``cnnlab.train.run`` is the training loop): once imported, those modules are made
callable, and calling one calls the API function of the same name in :mod:`cnnlab.api`.
"""
from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from cnnlab.version import __version__

API = ("train", "sweep", "compare", "load")
__all__ = [*API, "__version__"]

if TYPE_CHECKING:
    from cnnlab.api import compare, load, sweep, train


class _CallableModule(types.ModuleType):
    """A module of the package that is also an API function (``cnnlab.train(...)``)."""

    def __call__(self, *args, **kwargs):
        from cnnlab import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # the import system binds cnnlab.train (the module) here once it is imported
        if name in API and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name in ("train", "sweep", "compare"):
        import importlib

        return importlib.import_module(f"cnnlab.{name}")  # bound (and made callable) by _Package
    if name == "load":
        from cnnlab.api import load

        return load
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*API, "__version__", "__doc__", "__name__", "__path__", "__file__"})


sys.modules[__name__].__class__ = _Package
