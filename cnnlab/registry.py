"""Name → builder registries: one per kind of thing a study file names.

A study file says ``model: {name: lenet5}``; this module turns that name into a
function. Each kind (models, data sets, optimizers, schedulers, losses,
augmentations) gets one :class:`Registry`. Registering a name twice is a bug and
raises; looking up an unknown name raises :class:`UnknownName`, whose message
lists the known choices so the user can fix the study file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional


class UnknownName(KeyError):
    """A name that is not in a registry; the message lists the choices."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = fn
            return fn

        return add

    def get(self, name: str) -> Callable:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MODELS = Registry("model")
DATASETS = Registry("dataset")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
LOSSES = Registry("loss")


# --------------------------------------------------------------------------- typed metadata


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a registered data set without reading its files.

    ``None`` means only the files can tell (image folders). ``default_val_size`` None
    means 10 % of the training images. ``folder`` is where the files sit under the data
    root; ``files`` are ``(name, MD5)`` of the official uncompressed files there and
    ``packed_files`` of their compressed downloads (``.gz``), for ``cnnlab data check``.
    """

    name: str
    title: str
    classes: Optional[tuple[str, ...]] = None
    in_channels: Optional[int] = None
    image_size: Optional[int] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    default_val_size: Optional[int] = None
    folder: Optional[str] = None
    files: tuple[tuple[str, str], ...] = ()
    packed_files: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.classes) if self.classes is not None else None
