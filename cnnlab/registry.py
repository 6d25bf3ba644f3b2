"""Name → builder registries: one per kind of thing a study file names.

A study file says ``model: {name: lenet5}``; this module turns that name into a
function. Each kind (models, data sets, optimizers, schedulers, losses,
augmentations) gets one :class:`Registry`. Registering a name twice is a bug and
raises; looking up an unknown name raises :class:`UnknownName`, whose message
lists the known choices so the user can fix the study file.

Models are registered with their facts: :class:`ModelInfo` says what the rest of the
code needs to know about a network (its head, what it outputs, its stages, the smallest
input it takes...). ``@MODELS.register(info=ModelInfo(...))`` on a builder records the
static facts; the registered builder attaches the facts of the built instance to the
model it returns, where :func:`info_of` reads them.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Optional


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


# ============================================================================= models

OutputKind = Literal["logits", "log_probs", "probs"]
OUTPUT_KINDS = ("logits", "log_probs", "probs")
BUILDER_ARGS = ("num_classes", "in_channels")  # every model builder takes these; the rest are its options
INFO_ATTRIBUTE = "model_info"  # where a built model carries its ModelInfo


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of cnnlab needs to know about a network, besides its weights.

    Registered once per builder (the static facts); the built model carries a copy with the
    facts of that instance (``name``, ``in_channels``, and any fact its options change, e.g.
    lenet5's ``softmax_output`` makes ``output_kind`` "probs")."""

    family: str  # the file in cnnlab/models that defines it, e.g. "lenet"
    head_name: str = "fc"  # the classifier: the last linear layer, replaced when the class count differs (dotted)
    output_kind: OutputKind = "logits"  # what forward() returns; the loss and the evaluator follow it
    stages: tuple[str, ...] = ()  # stage modules, for train.finetune=layerN (ResNets: layer1..)
    min_input_size: int = 1  # smallest image side (pixels) the network accepts
    input_size: Optional[int] = None  # the image side it was designed for (informational; 224 for ImageNet nets)
    input_conv: Optional[str] = None  # first conv, adapted when RGB weights meet grey input (cnnlab.models.transfer)
    torchvision_name: Optional[str] = None  # torchvision's name for it: which ImageNet weights fit
    needs_whitening_init: bool = False  # the trainer calls models.airbench.init_whitening before training
    # facts of one built instance (filled by the registry, cnnlab.models.transfer)
    name: Optional[str] = None  # the registry name it was built under
    in_channels: Optional[int] = None  # input channels it was built for
    features_at: Optional[str] = None  # cut after this layer, with a new linear head (model.features_at)
    freeze_bn: Optional[bool] = None  # train.freeze_bn, set by transfer.apply_finetune

    def __post_init__(self):
        if not self.head_name:
            raise ValueError("head_name must name the classifier module")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind {self.output_kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
        if self.min_input_size < 1:
            raise ValueError(f"min_input_size must be at least 1, got {self.min_input_size}")
        object.__setattr__(self, "stages", tuple(self.stages))

    def but(self, **changes: Any) -> "ModelInfo":
        """A copy with some facts changed (the info is frozen)."""
        return dataclasses.replace(self, **changes)


def attach_info(model: Any, info: ModelInfo) -> Any:
    """Give ``model`` its facts (replacing any it had); returns the model."""
    if not isinstance(info, ModelInfo):
        raise TypeError(f"expected a ModelInfo, got {type(info).__name__}")
    setattr(model, INFO_ATTRIBUTE, info)  # a plain attribute: not a submodule, not in the state dict
    return model


def find_info(model: Any) -> Optional[ModelInfo]:
    """The model's :class:`ModelInfo`, or None for a network not built through the registry.
    Looks through torch.compile's and AveragedModel's wrappers."""
    while model is not None:
        info = vars(model).get(INFO_ATTRIBUTE) if hasattr(model, "__dict__") else None
        if info is not None:
            return info
        modules = vars(model).get("_modules", {}) if hasattr(model, "__dict__") else {}
        model = modules.get("_orig_mod") or modules.get("module")
    return None


def info_of(model: Any) -> ModelInfo:
    """The facts of a model built by a registered builder (``cnnlab.models.build_model``,
    ``MODELS.get(name)(...)`` or ``cnnlab.models.transfer.build_model``)."""
    info = find_info(model)
    if info is None:
        raise TypeError(f"{type(model).__name__} carries no ModelInfo: build it through cnnlab's model registry, "
                        "or give it one with cnnlab.registry.attach_info")
    return info


class ModelRegistry(Registry):
    """The model zoo's registry: every builder comes with its :class:`ModelInfo`.

    ``@MODELS.register(info=ModelInfo(family=...))`` records the builder and its static facts.
    What is registered is a thin wrapper (same name, signature and docstring) that attaches
    the instance's facts to the model it returns. A builder whose facts depend on its options
    attaches ``info.but(...)`` itself with :func:`attach_info`; the wrapper keeps those and
    fills in ``name`` and ``in_channels``."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self._info: dict[str, ModelInfo] = {}

    def register(self, name: str | None = None, *, info: Optional[ModelInfo] = None) -> Callable[[Callable], Callable]:
        if not isinstance(info, ModelInfo):
            raise TypeError(f"{self.kind} registration needs its facts: register(info=ModelInfo(...))")

        def add(fn: Callable) -> Callable:
            key = name or fn.__name__
            signature = inspect.signature(fn)
            missing = [a for a in BUILDER_ARGS if a not in signature.parameters]
            if missing:
                raise TypeError(f"{self.kind} {key!r}: a builder takes {', '.join(BUILDER_ARGS)}; "
                                f"missing {', '.join(missing)}")

            @functools.wraps(fn)
            def build(*args, **kwargs):
                model = fn(*args, **kwargs)
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                own = vars(model).get(INFO_ATTRIBUTE)  # set by a builder whose facts depend on its options
                return attach_info(model, (own or info).but(name=key, in_channels=bound.arguments["in_channels"]))

            Registry.register(self, key)(build)
            self._info[key] = info
            return build

        return add

    def info(self, name: str) -> ModelInfo:
        """The static facts registered with the builder ``name``."""
        self.get(name)  # an unknown name raises UnknownName with the choices
        return self._info[name]

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The builder's own keyword options (its signature without num_classes / in_channels)."""
        return {k: p for k, p in inspect.signature(self.get(name)).parameters.items()
                if k not in BUILDER_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def takes_any_option(self, name: str) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.get(name)).parameters.values())


# ============================================================================= the registries

MODELS = ModelRegistry("model")
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
