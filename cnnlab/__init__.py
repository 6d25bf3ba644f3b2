"""cnnlab: image-classification studies on small data sets, from one study file.

The Python API, plain functions (nothing heavy is imported until one is called)::

    import cnnlab
    run = cnnlab.train("recipes/quickstart_lenet5_mnist.yaml", {"train.epochs": 1}, out="runs/nb")
    model = cnnlab.load(run.dir)            # .model, .classes, .input_shape, .transform
    model.predict(["digit.png"])            # top-k classes with probabilities
    cnnlab.sweep("recipes/sweeps/x.yaml"); cnnlab.compare("sweeps/x", by="optim.lr")

The package's folders are its layers (each may import those below it, never above):
``api``/``cli`` on top; ``sweeps``, ``inference``, ``reporting``; ``training``; ``models``, ``data``;
``config``; ``runs``, ``outputs``, ``registry``, ``errors`` at the bottom.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cnnlab.version import __version__

API = ("train", "sweep", "compare", "load", "lr_find", "explain")
__all__ = [*API, "__version__"]

if TYPE_CHECKING:
    from cnnlab.api import compare, explain, load, lr_find, sweep, train


def __getattr__(name: str):
    if name in API:
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*API, "__version__", "__doc__", "__name__", "__path__", "__file__"})
