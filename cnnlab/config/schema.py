"""The study config schema: one typed field per option a study file can set, plus YAML and overrides.

A study file is YAML with the sections ``data``, ``model``, ``optim``, ``sched``,
``loss``, ``train`` and the top-level ``seed`` / ``name``. Values are layered:
defaults < study file < ``key=value`` overrides from the command line. This module
checks each field's type and range (:func:`validate`); it imports no data, model or
training code. Registry names and combinations that cannot work are checked by
:mod:`cnnlab.config.rules`, and :func:`cnnlab.config.load.load_config` does both. A bad value
raises :class:`ConfigError`, whose message names the field and what is allowed;
the CLI turns that into exit code 2.
"""
from __future__ import annotations

import copy
import re
import unicodedata
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from cnnlab.errors import ConfigError  # noqa: F401 - re-exported: cnnlab.config.schema.ConfigError


# ----------------------------------------------------------------------------- plain names

MAX_NAME_LENGTH = 100
# Shown in every refusal: what a name used to build a folder may be.
NAME_RULE = (f"a plain name of 1 to {MAX_NAME_LENGTH} characters without path separators (/ or \\), "
             "'..', control characters or leading/trailing spaces, e.g. 'study_a_mnist'")


def name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a folder name inside runs/ or sweeps/ (None when it is plain)."""
    if not isinstance(name, str):
        return f"must be text, got {type(name).__name__}"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long"
    if "/" in name or "\\" in name:
        return f"{name!r} holds a path separator"
    if ".." in name or name == ".":
        return f"{name!r} would name a parent or the same folder ('..' or '.')"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return f"{name!r} holds a control character"
    if name != name.strip():
        return f"{name!r} starts or ends with a space"
    return None


def check_name(name: Any, field: str, source: str = "config") -> str:
    """``name`` if it is plain (see NAME_RULE), else ConfigError naming ``field``."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"invalid {source}: {field}: {problem}; it names a folder, so it must be {NAME_RULE}")
    return name


SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any) -> Union[Literal["auto"], int, None]:
    """``"auto"``, or a memory size as bytes: an int, or text such as ``"2GB"`` (powers of 1000) or
    ``"1.5GiB"`` (powers of 1024); None when ``value`` is neither (or not above 0 bytes)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in SIZE_UNITS:
            return None
        number, unit = float(m.group(1)), m.group(2).lower()
    else:
        return None
    size = number * SIZE_UNITS[unit]
    return int(size) if size >= 1 and size == size and size != float("inf") else None


class _Section(BaseModel):
    # NaN and ±inf are never a usable setting (an infinite weight decay or jitter only yields NaNs)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(_Section):
    """Batched, on-device training augmentations (see cnnlab.data.augment)."""

    crop_padding: int = Field(0, ge=0, le=64)  # pixels padded on each side before a random crop
    crop_mode: Literal["zero", "reflect"] = "zero"
    flip: bool = False  # random horizontal flip, p = 0.5
    flip_mode: Literal["random", "alternate"] = Field("random", description=(
        "how data.augment.flip chooses: random = each image flipped with p 0.5 in every epoch; alternate = "
        "at random in the first epoch, then each image flipped exactly when it was not in the epoch before "
        "(airbench94's every-other-epoch flip: every image is seen both ways within any two epochs)"))
    pre_pad: bool = Field(False, description=(
        "pad the whole training set once, where training keeps it, and cut each batch's crops from that copy "
        "instead of padding every batch: the same crops from the same random numbers, one pass per batch fewer "
        "(costs a padded copy of the training images)"))
    brightness: Union[float, tuple[float, float]] = Field(0.0, description=(
        "colour jitter, as torchvision's ColorJitter takes it: a number v (factor uniform in [max(0, 1 - v), "
        "1 + v]) or the range [lo, hi] itself (0 <= lo <= hi); 0 = off"))
    contrast: Union[float, tuple[float, float]] = Field(0.0, description=(
        "colour jitter: a number v (factor in [max(0, 1 - v), 1 + v]) or a range [lo, hi] (0 <= lo <= hi); 0 = off"))
    saturation: Union[float, tuple[float, float]] = Field(0.0, description=(
        "colour jitter: a number v (factor in [max(0, 1 - v), 1 + v]) or a range [lo, hi] (0 <= lo <= hi); 0 = off"))
    hue: Union[float, tuple[float, float]] = Field(0.0, description=(
        "colour jitter: a number v in [0, 0.5] (hue shift in [-v, v] turns) or a range [lo, hi] "
        "(-0.5 <= lo <= hi <= 0.5); 0 = off"))
    rotate: float = Field(0.0, ge=0, le=180, description=(
        "random rotation: each image turned by its own angle, uniform in [-rotate, rotate] degrees (bilinear, "
        "black outside); with translate, scale and shear one affine per image"))
    translate: float = Field(0.0, ge=0, le=0.5, description=(
        "random shift of each image, uniform in [-translate, translate] x its width (x) and height (y)"))
    scale: float = Field(0.0, ge=0, lt=1, description="random zoom of each image, uniform in [1 - scale, 1 + scale]")
    shear: float = Field(0.0, ge=0, le=60, description="random x-shear of each image, uniform in [-shear, shear] degrees")
    auto: Literal["none", "trivial", "randaugment"] = Field("none", description=(
        "automatic augmentation policy, torchvision's op space drawn per image: trivial = TrivialAugmentWide (one "
        "op at a random strength); randaugment = RandAugment (auto_ops ops at strength auto_magnitude)"))
    auto_ops: int = Field(2, ge=1, le=6, description="data.augment.auto=randaugment: ops applied to each image")
    auto_magnitude: int = Field(9, ge=0, le=30, description=(
        "data.augment.auto=randaugment: the ops' strength, bin 0..30 (torchvision's default 9)"))
    mixup: float = Field(0.0, ge=0, le=10, description=(
        "mixup's Beta(alpha, alpha) parameter (0 = off; 0.2 to 1 usual): each image blended with another of its "
        "batch, the targets in the same shares (a soft-target loss)"))
    cutmix: float = Field(0.0, ge=0, le=10, description=(
        "cutmix's Beta(alpha, alpha) parameter (0 = off; 1 usual): a box of another image of the batch pasted in, "
        "the targets by the box's area; with mixup too, each image takes one of the two with p 0.5"))

    @field_validator("brightness", "contrast", "saturation", "hue", mode="before")
    @classmethod
    def _jitter_strength(cls, v: Any, info: Any) -> Any:
        hue = info.field_name == "hue"
        allowed = ("a number in [0, 0.5] or a range [lo, hi] with -0.5 <= lo <= hi <= 0.5" if hue else
                   "a number >= 0 or a range [lo, hi] with 0 <= lo <= hi")
        pair = list(v) if isinstance(v, (list, tuple)) else None
        numbers = [v] if pair is None else pair
        finite = all(isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < float("inf") for x in numbers)
        lo, hi = 1, 0  # neither a number nor a pair: fails the check below
        if finite and pair is None:
            lo, hi = (-v, v) if hue else (0, v)
        elif finite and len(pair) == 2:
            lo, hi = pair
        if not (-0.5 <= lo <= hi <= 0.5 if hue else 0 <= lo <= hi):
            raise ValueError(f"must be {allowed} (as torchvision's ColorJitter takes them); got {v!r}")
        return v if pair is None else (float(lo), float(hi))


class DataConfig(_Section):
    """Which images, how they are split and how they are brought to one size. For an image folder
    (``name: imagefolder``) ``root`` is either ``root/<class>/...`` (flat: split here into train /
    validation / test, stratified by class) or ``root/train/<class>/`` + ``root/test/<class>/``
    (+ ``root/val/<class>/``)."""

    name: str = "mnist"
    root: Optional[str] = Field(None, min_length=1)  # default: $CNNLAB_DATA, else ~/.cache/cnnlab
    # a count of images, or a fraction in (0, 1) of the training images (of all images in a flat folder);
    # None = the data set's default (10,000 / 5,000; 10 % of the images elsewhere)
    val_size: Optional[Union[int, float]] = None
    # flat image folders only: a count or a fraction in (0, 1) of all images; None = 20 %
    test_size: Optional[Union[int, float]] = None
    split_seed: int = Field(0, ge=0, lt=2**32)  # torch generators take seeds below 2**64
    train_limit: Optional[int] = Field(None, ge=1)  # keep only the first N training images
    folds: Optional[int] = Field(None, ge=2, le=20, description=(
        "k-fold cross-validation: the training pool (every image but the test split) cut into this many folds, "
        "stratified by class and drawn from data.split_seed; data.fold is the validation split, the others train "
        "(a sweep file's folds: k runs every fold); null = off"))
    fold: Optional[int] = Field(None, ge=0, le=19, description=(
        "with data.folds: which fold (0 .. folds - 1) is the validation split"))
    # side in pixels, or [height, width]; image folders are resized when decoded, other sets on the device
    resize: Optional[Union[int, tuple[int, int]]] = None
    resize_mode: Literal["bilinear", "bicubic"] = "bilinear"  # the interpolation of any resize
    # how an image of another aspect meets data.resize: stretch it, crop (shorter side to size, centre
    # crop) or pad (letterbox: longer side to size, black bars)
    resize_policy: Literal["stretch", "crop", "pad"] = "stretch"
    channels: Optional[Literal[1, 3]] = None  # None: 3 if any image is colour, else 1; 3 on grey repeats
    skip_bad_images: bool = False  # image folders: skip (and list) unreadable images instead of stopping
    download: bool = True
    allow_modified: bool = False  # train on MNIST / Fashion-MNIST files whose MD5 is not the official one
    # how much memory the decoded uint8 images may take where training keeps them: "auto" (half of the free
    # RAM on a CPU, half of the free GPU memory on a GPU), a size ("2GB", "500MB", "1.5GiB") or a number of
    # bytes. A set that does not fit is kept in pinned host memory (GPU) or streamed from its cache file on disk
    max_memory: Union[Literal["auto"], int] = "auto"
    # image folders: what tells the decoded cache that an image changed: "stat" (its size and mtime) or
    # "content" (a hash of its bytes too: every image is read on every load, for files edited in place)
    verify: Literal["stat", "content"] = "stat"
    sampler: Literal["shuffle", "balanced"] = Field("shuffle", description=(
        "how each training epoch orders its images: shuffle = a permutation (every image once); balanced = as "
        "many images drawn with replacement, each with probability 1 / its class's count, so classes come about "
        "equally often (seeded by seed and epoch: a resume draws the same)"))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("val_size", "test_size", mode="before")
    @classmethod
    def _count_or_fraction(cls, v: Any, info: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a count of images (0, 1, 2, ...) or a fraction between 0 and 1")
        least = 1 if info.field_name == "test_size" else 0
        if isinstance(v, float) and 0 < v < 1:
            return v  # a fraction
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"a fraction must lie strictly between 0 and 1, got {v}")
        if int(v) < least:
            raise ValueError(f"must be a count of at least {least} or a fraction between 0 and 1, got {v}")
        return int(v)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        size = parse_size(v)
        if size is None:
            raise ValueError(f'must be "auto", a size such as "2GB", "500MB" or "1.5GiB", or a number of bytes '
                             f"above 0; got {v!r}")
        return size

    @field_validator("resize", mode="before")
    @classmethod
    def _side_or_pair(cls, v: Any) -> Any:
        if v is None:
            return v
        pair = list(v) if isinstance(v, (list, tuple)) else [v, v]
        if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
            raise ValueError("must be one side in pixels or [height, width]")
        if not all(8 <= x <= 4096 for x in pair):
            raise ValueError(f"sides must be between 8 and 4096 pixels, got {v}")
        return pair[0] if pair[0] == pair[1] else tuple(pair)


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
    softmax_output: Optional[bool] = None  # end forward() in a softmax (Study A/C/E)
    dropout_before_act: Optional[bool] = None  # mlp: linear → dropout → activation (Study C's order)
    variant: Optional[str] = Field(None, min_length=1)  # named variant of a family, e.g. mnist_cnn 'dropout'
    init: Optional[Literal["default", "xavier_uniform", "kaiming"]] = None
    stem: Optional[Literal["imagenet", "cifar"]] = None  # torchvision nets at 32 px
    width: Optional[int] = Field(None, ge=1)  # width multiplier / base width where a family has one
    # where the starting weights come from (cnnlab.models.transfer)
    pretrained: Optional[Literal["imagenet"]] = None
    weights_path: Optional[str] = Field(None, min_length=1)  # a torchvision-format state dict
    init_from: Optional[str] = Field(None, min_length=1)  # a cnnlab run folder or checkpoint
    features_at: Optional[str] = Field(None, min_length=1)  # train a linear head on features at this layer

    def builder_options(self) -> dict[str, Any]:
        """The architecture options the study set explicitly (passed to the builder)."""
        skip = {"name", "pretrained", "weights_path", "init_from", "features_at"}
        return {k: getattr(self, k) for k in self.model_fields_set if k not in skip and getattr(self, k) is not None}


# An optimizer's own weight decay where it is not 0 (torch.optim.AdamW's default), for weight_decay: null.
OWN_WEIGHT_DECAY = {"adamw": 0.01}


class OptimConfig(_Section):
    name: str = "adam"
    lr: float = Field(0.001, gt=0, le=100)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    # null (the default) = the optimizer's own: 0.01 for adamw as in torch, 0 for the others. Resolved here, at
    # validation, so a config built from a file and one round-tripped through a dict (a sweep run) agree, and
    # config.yaml, the printed settings and sweep run ids carry the number trained with.
    weight_decay: Optional[float] = Field(None, ge=0, validate_default=True, description=(
        "L2 weight decay; null = the optimizer's own (adamw 0.01, others 0)"))
    betas: tuple[float, float] = (0.9, 0.999)
    eps: Optional[float] = Field(None, gt=0)
    head_lr: Optional[float] = Field(None, gt=0)  # a separate lr for the classifier head
    no_decay_norm_bias: bool = False  # exclude norm weights and biases from weight decay
    # airbench's larger lr for batch-norm shifts: their lr × this and weight decay ÷ this (lr × decay kept)
    norm_bias_lr_scale: float = Field(1.0, gt=0, le=1000)
    clip_grad_norm: Optional[float] = Field(None, gt=0, description=(
        "gradient clipping: before each optimizer step the gradients of all trained parameters are scaled down "
        "together so that their total 2-norm is at most this (torch.nn.utils.clip_grad_norm_; under fp16's loss "
        "scaler the true, unscaled gradients are clipped; with train.accumulate, the step's summed gradient); "
        "a number above 0, or null = off"))

    @field_validator("weight_decay")
    @classmethod
    def _own_weight_decay(cls, v: Optional[float], info: Any) -> float:
        return OWN_WEIGHT_DECAY.get(info.data.get("name"), 0.0) if v is None else v

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
    class_weights: Union[Literal["auto"], list[float], None] = Field(None, description=(
        "a weight per class in the training loss (cross_entropy, nll, focal, multi_margin): auto = each class's "
        "inverse frequency in the training split, normalised to mean 1 over the classes; or a list, one weight "
        "above 0 per class in the order of the class list; null = unweighted. The validation loss stays unweighted"))
    gamma: float = Field(2.0, ge=0, le=20, description=(
        "loss.name=focal: the focusing exponent, each image's cross-entropy times (1 - p_true)**gamma; "
        "0 = cross-entropy"))

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or not all(w > 0 for w in v)):
            raise ValueError(f"must be 'auto', null or a list of one weight above 0 per class, got {v}")
        return v


class EarlyStoppingConfig(_Section):
    patience: int = Field(0, ge=0)  # evaluations without improvement; 0 = off
    min_delta: float = Field(0.0, ge=0)


class SweepRunConfig(_Section):
    """Which sweep run this is: set by ``cnnlab sweep`` on each of its runs (after the run id is taken), so
    trackers group a sweep's runs (one MLflow experiment) and name each by its settings, not its hash."""

    name: str  # the sweep's name (its file's stem)
    run_id: str
    settings: dict[str, Any] = Field(default_factory=dict)  # the swept keys' values in this run


MLFLOW_URIS = ("an SQLite database (sqlite:///mlflow.db, relative to the folder cnnlab starts in, or "
               "sqlite:////abs/path/mlflow.db: MLflow 3's recommended store without a server; artifacts go to "
               "mlartifacts/ beside it), a tracking server (http://host:port, https://...), or a file: store "
               "(file:./mlruns or file:///abs/path; in maintenance mode since MLflow 3)")


def mlflow_uri(v: str) -> str:
    """``train.mlflow`` checked, a relative ``sqlite:///mlflow.db`` made absolute: resolved against the current
    folder once, at load, so the config carries the absolute path to a resume, a sweep worker or a Ray trial
    that runs elsewhere. A ``file:`` store is kept as written (``cnnlab.training.tracking.tracking_uri`` resolves a
    relative one when the run starts); servers as given. ValueError if it is none of :data:`MLFLOW_URIS`."""
    scheme, _, rest = v.partition(":")
    if scheme == "sqlite" and rest.startswith("///"):
        path, mark, query = rest[3:].partition("?")  # ?timeout=... and such: SQLAlchemy's connect arguments
        if path.strip("/") and path != ":memory:":
            return f"sqlite:///{Path(path).resolve()}{mark}{query}" if not path.startswith("/") else v
    elif (scheme == "file" and rest.strip("/")) or (scheme in ("http", "https") and rest[2:] and rest[:2] == "//"):
        return v
    raise ValueError(f"{v!r} is not an MLflow tracking URI; use {MLFLOW_URIS}, or null for no MLflow")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (as :func:`mlflow_uri` left it), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


class TrainConfig(_Section):
    epochs: float = Field(10, ge=0, le=10_000, description=(
        "passes over the training split; fractions allowed for quick runs (rounded to whole optimizer steps)"))
    batch_size: int = Field(64, ge=1, le=65_536, description=(
        "images per forward/backward pass; an optimizer step takes train.accumulate such batches"))
    accumulate: int = Field(1, ge=1, le=4096, description=(
        "gradient accumulation: each optimizer step sums the gradients of this many consecutive batches (each "
        "batch's loss weighted by its share of the step's images, 1/accumulate for full batches), so one step "
        "sees batch_size x accumulate images at the memory of one batch; the optimizer, the schedule, the EMA "
        "and lookahead step once per optimizer step. Every count of steps (train.eval_every, "
        "sched.warmup_steps, sched.interval=step, train.lookahead_every, metrics.jsonl's step) counts optimizer "
        "steps, not batches; an epoch's last step takes the batches left over. 1 = off"))
    eval_batch_size: int = Field(1000, ge=1, le=65_536)
    eval_every: int = Field(0, ge=0, description=(
        "optimizer steps between evaluations (each step is train.accumulate batches); 0 = only at epoch ends"))
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"  # picks best.pt
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    # auto = bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32 (runtime.resolve_precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Optional[bool] = None  # None = where measured faster for the device kind (runtime)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (N < the number of visible GPUs, checked at the run)
    deterministic: bool = False  # torch.use_deterministic_algorithms (GPU reproducibility)
    threads: Optional[int] = Field(None, ge=1, le=512)  # torch intra-op threads
    compile: bool = False  # torch.compile the step: forward + loss + backward (cnnlab.training.step; compile time apart)
    # drop each epoch's short last batch (None = when compiling: one batch shape, no recompile, CUDA graphs)
    drop_last: Optional[bool] = None
    # TF32 matmuls/convolutions in fp32 runs: auto = on for CUDA GPUs of compute capability >= 8.0 (Ampere on)
    tf32: Union[Literal["auto"], bool] = "auto"
    finetune: Union[str, list[str]] = "all"  # all | head | layer1..layer4 | none | [name prefixes]
    freeze_bn: Optional[bool] = None  # None = keep batch-norm statistics frozen in frozen parts
    ema: Optional[float] = Field(None, gt=0, lt=1)  # decay of an exponential moving average of weights
    lookahead: Optional[float] = Field(None, gt=0, lt=1, description=(
        "Lookahead-style weight averaging (airbench94: 0.95**5 = 0.774): every train.lookahead_every steps a "
        "slow copy of the weights moves toward them, slow = d*slow + (1-d)*weights with d = lookahead * "
        "(step / total steps)**3 (a cubic ramp from 0), and the weights are reset to it; at the end the weights "
        "become the slow copy. Unlike train.ema (an average beside training, which evaluation scores), it "
        "changes the weights that train; the two cannot be combined. null = off"))
    lookahead_every: int = Field(5, ge=1, le=10_000, description="steps between train.lookahead's averagings")
    whitening_bias_epochs: Optional[float] = Field(None, ge=0, le=10_000, description=(
        "train the whitening layer's bias (airbench) only for the first N epochs, then keep it fixed "
        "(airbench94: 3); null = trained throughout"))
    score_train: bool = Field(True, description=(
        "score the train split at the end of the run besides validation and test (summary.json's train); "
        "speed runs turn it off: with test-time augmentation it can take longer than the training"))
    tta: Literal["none", "flip", "translate", "flip_translate"] = "none"  # test-time augmentation
    progress: bool = True
    tensorboard: bool = False
    mlflow: Optional[str] = Field(None, description=(  # checked at load: the URI here; mlflow, the database in checks
        "where each run is tracked in MLflow (params, metrics at each evaluation, tags, artifacts): "
        f"{MLFLOW_URIS}; a relative database path is made absolute when the config is loaded; null = off"))
    sweep: Optional[SweepRunConfig] = None  # set by cnnlab sweep, not by hand

    @field_validator("mlflow")
    @classmethod
    def _mlflow_uri(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else mlflow_uri(v)  # the database or folder it names: checked in checks

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        head, _, index = v.partition(":")
        if v in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N (N = a GPU index, e.g. cuda:1)")

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

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # the name becomes a folder (runs/<time>-<name>): it must stay inside its parent
        problem = name_problem(v)
        if problem:
            raise ValueError(f"{problem}; it names a folder, so it must be {NAME_RULE}")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> "Config":
        if self.train.finetune == "none" and self.train.epochs > 0:
            raise ValueError("train.finetune=none trains nothing; set train.epochs=0 for zero-shot evaluation")
        if self.sched.name == "multistep" and not self.sched.milestones:
            raise ValueError("sched.milestones must be set for sched.name=multistep")
        if self.train.lookahead is not None and self.train.ema is not None:
            raise ValueError("train.lookahead and train.ema both average the weights (lookahead resets the training "
                             "weights to its average; ema keeps one beside them): set one of them to null")
        if self.loss.class_weights is not None and self.loss.name == "mse":
            raise ValueError("loss.class_weights: loss.name=mse takes no class weights; use cross_entropy, nll, "
                             "focal or multi_margin, or class_weights: null")
        if self.loss.name == "focal" and self.loss.label_smoothing:
            raise ValueError("loss.label_smoothing: loss.name=focal has no label smoothing; set it to 0")
        if (self.data.augment.mixup or self.data.augment.cutmix) and self.loss.name == "multi_margin":
            raise ValueError("data.augment.mixup / cutmix: loss.name=multi_margin takes no soft targets; use "
                             "cross_entropy, nll, focal or mse, or set mixup and cutmix to 0")
        if (self.data.folds is None) != (self.data.fold is None):
            raise ValueError("data.folds and data.fold go together: data.folds = k cuts the training pool into k "
                             "folds and data.fold (0 .. k - 1) names the validation fold; set both or neither")
        if self.data.folds is not None and self.data.fold >= self.data.folds:
            raise ValueError(f"data.fold: {self.data.fold} is not one of the {self.data.folds} folds "
                             f"(0 .. {self.data.folds - 1})")
        if self.data.folds is not None and self.data.val_size is not None:
            raise ValueError("data.val_size: with data.folds the validation split is one fold of the training pool; "
                             "leave data.val_size unset")
        if self.data.augment.flip_mode == "alternate" and not self.data.augment.flip:
            raise ValueError("data.augment.flip_mode=alternate needs data.augment.flip=true")
        if self.model.features_at is not None and self.model.name != "linear":
            pass  # features_at is read by cnnlab.models.transfer for any backbone
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice (YAML itself would silently keep the last value)."""

    def __init__(self, key: Any, where: str, first_line: int, second_line: int):
        self.key, self.where, self.lines = key, where, (first_line, second_line)
        super().__init__(f"key {key!r} is given twice {where}(lines {first_line} and {second_line}); "
                         "YAML would keep only the last value, so remove or merge one of them")


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in any mapping, at any depth.

    The whole node tree is checked before anything is constructed, so the error names the
    key, the mapping it sits in (``in train``) and both line numbers. Keys that come in
    through a merge (``<<: *defaults``) may be overridden: that is what merges are for."""

    def construct_document(self, node):
        self._check_duplicates(node, [], set())
        return super().construct_document(node)

    def _check_duplicates(self, node, path: list[str], seen: set[int]) -> None:
        if id(node) in seen:  # an alias met again (anchors may repeat a node)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, [*path, f"[{i}]"], seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) \
                    else key_node.start_mark.line  # a complex key: compared by position only
                line = key_node.start_mark.line + 1
                try:
                    if key in first:
                        where = f"in {'.'.join(path)} " if path else "at the top level "
                        raise DuplicateKeyError(key, where, first[key], line)
                    first[key] = line
                except TypeError:  # unhashable key: yaml refuses it itself
                    pass
                self._check_duplicates(value_node, [*path, str(key)], seen)


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load, but a key given twice in any mapping raises DuplicateKeyError."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (``0.01``, ``true``, ``[6,16]``)."""
    try:
        return load_yaml_text(text) if text != "" else ""
    except DuplicateKeyError as e:
        raise ConfigError(f"override value {text!r}: {e}") from None
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
        data = load_yaml_text(p.read_text())
    except DuplicateKeyError as e:
        raise ConfigError(f"{p}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        raise ConfigError(f"{p} is empty; expected a mapping with sections such as data, model, optim, train")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping (data:, model:, ...), not a {type(data).__name__}")
    return data


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict against the schema (types, ranges, keys), or raise :class:`ConfigError`.

    Registry names and combinations are not checked here: use :func:`cnnlab.config.load.build_config`."""
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


def flatten(tree: dict[str, Any], prefix: str = "", keep_empty: bool = True) -> dict[str, Any]:
    """A nested dict as ``{"optim.lr": 0.01, ...}`` (dotted keys, leaves only). ``keep_empty``: an empty dict
    is a leaf (``{"train.sweep.settings": {}}``); False drops it, as a sweep's run ids and the resume check
    always have (their results depend on it: a run id must not change)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and (value or not keep_empty):
            out.update(flatten(value, f"{prefix}{key}.", keep_empty))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff_lines(cfg: Config) -> list[str]:
    """The settings of ``cfg`` that differ from the defaults, one ``key: value`` line each (what a run
    prints at its start; the whole config is always saved as config.yaml)."""
    defaults, values = flatten(Config().to_dict()), flatten(cfg.to_dict())
    changed = [k for k, v in values.items() if defaults.get(k, object()) != v]
    lines = [f"config: {len(changed)} settings differ from the defaults (all settings: config.yaml)"]
    for key in changed:
        text = yaml.safe_dump(values[key], default_flow_style=True, width=1_000_000).strip()
        lines.append(f"  {key}: {text.removesuffix(chr(10) + '...').strip()}")
    return lines
