"""The study config schema: one typed field per option a study file can set, plus YAML and overrides.

A study file is YAML with the sections ``data``, ``model``, ``optim``, ``sched``,
``loss``, ``train`` and the top-level ``seed`` / ``name``. Values are layered:
defaults < study file < ``key=value`` overrides from the command line. This module
checks each field's type and range (:func:`validate`); it imports no data, model or
training code. Registry names and combinations that cannot work are checked by
:mod:`cnnlab.checks`, and :func:`cnnlab.loader.load_config` does both. A bad value
raises :class:`ConfigError`, whose message names the field and what is allowed;
the CLI turns that into exit code 2.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A study or sweep file (or an override) that cannot be run, with why."""


class _Section(BaseModel):
    # NaN and ±inf are never a usable setting (an infinite weight decay or jitter only yields NaNs)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(_Section):
    """Batched, on-device training augmentations (see cnnlab.augment)."""

    crop_padding: int = Field(0, ge=0, le=64)  # pixels padded on each side before a random crop
    crop_mode: Literal["zero", "reflect"] = "zero"
    flip: bool = False  # random horizontal flip, p = 0.5
    brightness: float = Field(0.0, ge=0)
    contrast: float = Field(0.0, ge=0)
    saturation: float = Field(0.0, ge=0)
    hue: float = Field(0.0, ge=0, le=0.5)


class DataConfig(_Section):
    name: str = "mnist"
    root: Optional[str] = Field(None, min_length=1)  # default: $CNNLAB_DATA, else ~/.cache/cnnlab
    val_size: Optional[int] = Field(None, ge=0)  # None = the data set's default (10,000 / 5,000)
    split_seed: int = Field(0, ge=0, lt=2**32)  # torch generators take seeds below 2**64
    train_limit: Optional[int] = Field(None, ge=1)  # keep only the first N training images
    resize: Optional[int] = Field(None, ge=8, le=1024)  # side in pixels, done on the device
    resize_mode: Literal["bilinear", "bicubic"] = "bilinear"
    channels: Optional[Literal[1, 3]] = None  # 3 on a grey data set repeats the channel
    download: bool = True
    allow_modified: bool = False  # train on MNIST / Fashion-MNIST files whose MD5 is not the official one
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


Activation = Literal["tanh", "relu", "leaky_relu", "gelu", "sigmoid", "elu"]


class ModelConfig(_Section):
    """The network. ``name`` picks a builder in the model registry; the other
    fields are that builder's options and are passed only when set, so each
    builder keeps its own defaults (a field the builder does not take is an error)."""

    name: str = "lenet5"
    # architecture options (a builder takes the ones that make sense for it)
    activation: Optional[Activation] = None
    pooling: Optional[Literal["avg", "max"]] = None
    widths: Optional[list[PositiveInt]] = None  # conv channel widths, e.g. [6, 16, 120]
    hidden: Optional[list[PositiveInt]] = None  # fully connected hidden sizes
    batch_norm: Optional[bool] = None
    dropout: Optional[float] = Field(None, ge=0, lt=1)
    softmax_output: Optional[bool] = None  # end forward() in a softmax (Study A/E)
    variant: Optional[str] = Field(None, min_length=1)  # named variant of a family, e.g. mnist_cnn 'dropout'
    init: Optional[Literal["default", "xavier_uniform", "kaiming"]] = None
    stem: Optional[Literal["imagenet", "cifar"]] = None  # torchvision nets at 32 px
    width: Optional[int] = Field(None, ge=1)  # width multiplier / base width where a family has one
    # where the starting weights come from (cnnlab.transfer)
    pretrained: Optional[Literal["imagenet"]] = None
    weights_path: Optional[str] = Field(None, min_length=1)  # a torchvision-format state dict
    init_from: Optional[str] = Field(None, min_length=1)  # a cnnlab run folder or checkpoint
    features_at: Optional[str] = Field(None, min_length=1)  # train a linear head on features at this layer

    def builder_options(self) -> dict[str, Any]:
        """The architecture options the study set explicitly (passed to the builder)."""
        skip = {"name", "pretrained", "weights_path", "init_from", "features_at"}
        return {k: getattr(self, k) for k in self.model_fields_set if k not in skip and getattr(self, k) is not None}


class OptimConfig(_Section):
    name: str = "adam"
    lr: float = Field(0.001, gt=0, le=100)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: Optional[float] = Field(None, gt=0)
    head_lr: Optional[float] = Field(None, gt=0)  # a separate lr for the classifier head
    no_decay_norm_bias: bool = False  # exclude norm weights and biases from weight decay

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v


class SchedConfig(_Section):
    name: str = "none"
    interval: Literal["epoch", "step"] = "epoch"  # when the scheduler steps
    step_size: int = Field(1, ge=1)  # step: epochs (or iterations) per decay
    gamma: float = Field(0.1, gt=0, le=1)  # step / multistep / exponential factor
    milestones: list[int] = Field(default_factory=list)  # multistep
    max_lr: Optional[float] = Field(None, gt=0)  # onecycle; default = optim.lr
    pct_start: float = Field(0.25, gt=0, lt=1)  # onecycle warm-up fraction
    min_lr: float = Field(0.0, ge=0)  # cosine floor
    patience: int = Field(2, ge=0)  # plateau: evaluations without improvement
    warmup_steps: int = Field(0, ge=0)  # linear warm-up before any schedule (iterations)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or v != sorted(set(v)):
            raise ValueError("milestones must be positive and strictly increasing")
        return v


class LossConfig(_Section):
    name: str = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class EarlyStoppingConfig(_Section):
    patience: int = Field(0, ge=0)  # evaluations without improvement; 0 = off
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    epochs: float = Field(10, ge=0, le=10_000)  # fractional epochs allowed for quick runs
    batch_size: int = Field(64, ge=1, le=65_536)
    eval_batch_size: int = Field(1000, ge=1, le=65_536)
    eval_every: int = Field(0, ge=0)  # iterations between evaluations; 0 = only at epoch ends
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"  # picks best.pt
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: Optional[bool] = None  # None = on for conv nets on CPU, and with bf16/fp16 on GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False  # torch.use_deterministic_algorithms (GPU reproducibility)
    threads: Optional[int] = Field(None, ge=1, le=512)  # torch intra-op threads
    compile: bool = False  # torch.compile the model (compile time reported apart)
    finetune: Union[str, list[str]] = "all"  # all | head | layer1..layer4 | none | [name prefixes]
    freeze_bn: Optional[bool] = None  # None = keep batch-norm statistics frozen in frozen parts
    ema: Optional[float] = Field(None, gt=0, lt=1)  # decay of an exponential moving average of weights
    tta: Literal["none", "flip", "translate", "flip_translate"] = "none"  # test-time augmentation
    progress: bool = True
    tensorboard: bool = False

    @field_validator("finetune")
    @classmethod
    def _finetune_names(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        allowed = {"all", "head", "none", "layer1", "layer2", "layer3", "layer4"}
        if isinstance(v, str) and v not in allowed:
            raise ValueError(f"must be one of {sorted(allowed)} or a list of parameter-name prefixes")
        if isinstance(v, list) and not v:
            raise ValueError("an empty list would train nothing; use 'none'")
        return v


class Config(_Section):
    name: str = "study"
    seed: int = Field(0, ge=0, lt=2**32)  # the trainer seeds generators with seed × 1,000,003 + epoch
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _combinations(self) -> "Config":
        if self.train.finetune == "none" and self.train.epochs > 0:
            raise ValueError("train.finetune=none trains nothing; set train.epochs=0 for zero-shot evaluation")
        if self.sched.name == "multistep" and not self.sched.milestones:
            raise ValueError("sched.milestones must be set for sched.name=multistep")
        if self.model.features_at is not None and self.model.name != "linear":
            pass  # features_at is read by cnnlab.transfer for any backbone
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (``0.01``, ``true``, ``[6,16]``)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``optim.lr=0.01``) in a nested dict, returning a new dict."""
    out = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"{key}: {part!r} is not a section, cannot set a key inside it")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=0.01")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    return key.strip(), parse_value(value)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one clear error for every way a file can be wrong."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file")
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; expected a YAML study file")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        raise ConfigError(f"{p} is empty; expected a mapping with sections such as data, model, optim, train")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping (data:, model:, ...), not a {type(data).__name__}")
    return data


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict against the schema (types, ranges, keys), or raise :class:`ConfigError`.

    Registry names and combinations are not checked here: use :func:`cnnlab.loader.build_config`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def _explain(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed here: {', '.join(_allowed_keys(err['loc']))}"
        elif err["type"] == "literal_error":
            msg = f"{msg}, got {err.get('input')!r}"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in err:
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{field}: {msg}")
    return f"invalid {source}: " + "; ".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return list(model.model_fields)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
