"""Checks of a config against the registries: known names, and combinations that cannot work.

Field types and ranges are checked by the schema in :mod:`cnnlab.config.schema`, which
imports no data or model code; this module fills the registries (importing the
data sets, models and optimizers) and checks each registry name
(:func:`check_names`), then catches what only shows when fields meet
(:func:`check_config`): a model option the chosen
builder does not take, an ``nll`` loss on a model that outputs raw logits,
``finetune=layer3`` on a net without stages, a resize below what the network
accepts, a validation split as large as the training set. The network is built
on PyTorch's ``meta`` device, so these checks cost no memory and almost no time.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab import data, models  # noqa: F401 - data, models, optim fill the registries
from cnnlab.training import runtime  # noqa: F401 - data, models, optim fill the registries
from cnnlab.training import optim
from cnnlab.config.schema import Config, ConfigError, sqlite_path
from cnnlab.data import dataset_info
from cnnlab.registry import DATASETS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS, info_of
from cnnlab.models.transfer import cut_points

# (field, registry) for every config field that names a registry entry
NAMED_FIELDS = (("data.name", DATASETS), ("model.name", MODELS), ("optim.name", OPTIMIZERS),
                ("sched.name", SCHEDULERS), ("loss.name", LOSSES))


def check_names(cfg: Config, source: str = "config") -> None:
    """Every registry name the config uses is registered; else ConfigError listing the choices."""
    problems = []
    for field, registry in NAMED_FIELDS:
        section, key = field.split(".")
        name = getattr(getattr(cfg, section), key)
        if name not in registry:
            problems.append(f"{field}: unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")
    if problems:
        raise ConfigError(f"invalid {source}: " + "; ".join(problems))


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Refuse a model option (a field of the flat ``model`` section, set to something other than
    its default None) that the builder ``name`` does not take, judged by the builder's own
    signature. The other families' fields may stay in a study file as long as they are unset."""
    if MODELS.takes_any_option(name):
        return
    accepted = MODELS.options(name)
    for key, value in options.items():
        if key in accepted:
            continue
        takers = [n for n in MODELS.names() if key in MODELS.options(n)]
        where = (f"it is an option of {', '.join(takers)}" if takers else "no registered model takes it")
        raise ConfigError(
            f"model.{key}: not an option of model {name!r} (it is set to {value!r}, but the {name} builder "
            f"does not take it; {where}). The options {name!r} accepts are: "
            f"{', '.join(accepted) or 'none'}. Remove model.{key} (or set it to null) or choose a model that "
            "takes it.")


@dataclass(frozen=True)
class Planned:
    """What the config rules look at: the config, its data set's facts and its network built on the meta device
    (no memory, no weights), so a sweep refuses a bad combination before its first run."""

    cfg: Config
    data: Any  # cnnlab.data.dataset_info(cfg.data.name)
    options: dict  # the model builder's options (cfg.model.builder_options())
    builder: Any
    in_channels: int
    num_classes: int
    model: torch.nn.Module
    info: Any  # the network's ModelInfo

    @property
    def image_size(self) -> int | None:
        resize = self.cfg.data.resize
        return (min(resize) if isinstance(resize, tuple) else resize) or self.data.image_size


def check_config(cfg: Config) -> None:
    """Combinations of fields that cannot work (the names are known: see check_names): the network is built on
    the meta device, then each rule of :data:`CONFIG_RULES` looks at it in turn; the first problem raises a
    ConfigError naming the field."""
    check_model_options(cfg.model.name, cfg.model.builder_options())
    planned = plan_network(cfg)
    for rule in CONFIG_RULES:
        rule(planned)


def plan_network(cfg: Config) -> Planned:
    info = dataset_info(cfg.data.name)
    builder, options = MODELS.get(cfg.model.name), cfg.model.builder_options()
    in_channels = cfg.data.channels or info.in_channels or 3
    if cfg.data.channels == 1 and info.in_channels == 3:
        raise ConfigError(f"data.channels: 1 is not possible for {cfg.data.name!r}, whose images have 3 channels; "
                          "use 3 or leave it unset")
    num_classes = info.num_classes or 10
    try:
        with torch.device("meta"):
            model = builder(num_classes=num_classes, in_channels=in_channels, **options)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        # name every option as its field (model.widths=...), so the message points at what to change
        fields = ", ".join(f"model.{k}={v!r}" for k, v in options.items()) or "its default options"
        raise ConfigError(f"model: {cfg.model.name!r} cannot be built with {fields}: {e}") from None
    return Planned(cfg, info, options, builder, in_channels, num_classes, model, info_of(model))


def _loss_takes_the_output(p: Planned) -> None:
    cfg, kind = p.cfg, p.info.output_kind
    accepts = getattr(LOSSES.get(cfg.loss.name), "accepts", None)
    if cfg.model.features_at is None and accepts and kind not in accepts:
        raise ConfigError(
            f"loss.name: {cfg.loss.name!r} expects a model that outputs {' or '.join(accepts)}, but "
            f"{cfg.model.name!r} outputs {kind}; use {'nll' if kind == 'log_probs' else 'cross_entropy'}")


def _whitening_needs_its_layer(p: Planned) -> None:
    if p.cfg.train.whitening_bias_epochs is not None and not p.info.needs_whitening_init:
        raise ConfigError(f"train.whitening_bias_epochs: {p.cfg.model.name!r} has no whitening layer (airbench "
                          "has one); leave it null for this model")


def _finetune_stage_exists(p: Planned) -> None:
    ft, stages = p.cfg.train.finetune, p.info.stages
    if isinstance(ft, str) and ft.startswith("layer") and ft not in stages:
        raise ConfigError(f"train.finetune: {ft!r} needs a network with stages named layer1..; "
                          f"{p.cfg.model.name!r} has {list(stages) or 'no stages'}; use all, head or a list of "
                          "parameter-name prefixes")


def _named_layers_exist(p: Planned) -> None:
    """features_at and finetune prefixes name layers: checked on the meta network too, so a sweep refuses them
    before its first run instead of failing each run in cnnlab.models.transfer."""
    cfg, ft = p.cfg, p.cfg.train.finetune
    if cfg.model.features_at is not None and cfg.model.features_at not in cut_points(p.model):
        raise ConfigError(f"model.features_at: {cfg.model.features_at!r} is not a layer of {cfg.model.name!r} "
                          f"before its classifier; choose one of: {', '.join(cut_points(p.model))}")
    if isinstance(ft, list) and cfg.model.features_at is None:
        names = [n for n, _ in p.model.named_parameters()]
        for prefix in ft:
            prefix = str(prefix).rstrip(".")
            if not any(n == prefix or n.startswith(prefix + ".") for n in names):
                raise ConfigError(f"train.finetune: no parameter name of {cfg.model.name!r} starts with {prefix!r}; "
                                  f"top-level names are: {', '.join(sorted({n.split('.')[0] for n in names}))}")


def _resize_fits_the_data(p: Planned) -> None:
    cfg, info = p.cfg, p.data
    if isinstance(cfg.data.resize, tuple) and cfg.data.resize_policy != "stretch" and cfg.data.name != "imagefolder":
        raise ConfigError(f"data.resize_policy: {cfg.data.resize_policy!r} applies to image folders (resized when "
                          f"decoded); {cfg.data.name!r} is resized on the device by stretching, so use a square "
                          "data.resize or resize_policy=stretch")
    if cfg.data.test_size is not None and info.test_size is not None:
        raise ConfigError(f"data.test_size: {cfg.data.name!r} has its own {info.test_size:,} test images; "
                          "data.test_size splits a flat image folder (data.name=imagefolder) only. Remove it.")


def _images_big_enough(p: Planned) -> None:
    cfg, size, min_size = p.cfg, p.image_size, p.info.min_input_size
    if size is None or size >= min_size:
        return
    # Blame what made the images too small: options that raised the model's minimum (more stages
    # in model.widths) before the data set, which only the default network fits.
    culprits = [k for k in p.options if MODELS.info(cfg.model.name).min_input_size < min_size
                and _min_size_with(p.builder, p.num_classes, p.in_channels, {k: p.options[k]}) > size]
    if culprits:
        fields = ", ".join(f"model.{k}={p.options[k]!r}" for k in culprits)
        raise ConfigError(f"{fields}: makes {cfg.model.name!r} need inputs of at least {min_size}×{min_size} "
                          f"pixels, but images would be {size}×{size}; use fewer stages or set data.resize "
                          f"to {min_size} or more")
    field = "data.resize" if cfg.data.resize else "data.name"
    raise ConfigError(f"{field}: {cfg.model.name!r} needs inputs of at least {min_size}×{min_size} pixels, "
                      f"but images would be {size}×{size}; set data.resize to {min_size} or more")


def check_loaded_size(cfg: Config, image_size) -> None:
    """The images as loaded (an image folder's size is known only then) against the network's smallest input:
    a ConfigError naming data.resize before the first step, instead of a convolution's error inside it."""
    side = min(image_size) if isinstance(image_size, tuple) else image_size
    min_size = plan_network(cfg).info.min_input_size
    if side is not None and side < min_size:
        raise ConfigError(f"data.resize: the images of {cfg.data.root or cfg.data.name} are {side} pixels on their "
                          f"shorter side as loaded, but {cfg.model.name!r} needs at least {min_size}×{min_size}; "
                          f"set data.resize to {min_size} or more")


def _reflect_padding_fits(p: Planned) -> None:
    aug, size = p.cfg.data.augment, p.image_size
    if size is not None and aug.crop_padding and aug.crop_mode == "reflect" and aug.crop_padding >= size:
        raise ConfigError(f"data.augment.crop_padding: {aug.crop_padding} with crop_mode=reflect must be smaller "
                          f"than the {size}×{size} images (reflection needs that many pixels to mirror); use at "
                          f"most {size - 1}, or crop_mode=zero")


def _validation_leaves_training(p: Planned) -> None:
    cfg, info = p.cfg, p.data
    val_size = cfg.data.val_size if cfg.data.val_size is not None else info.default_val_size
    if isinstance(val_size, float) and info.train_size is not None:
        val_size = max(1, round(val_size * info.train_size))
    if info.train_size is not None and val_size is not None and val_size >= info.train_size:
        raise ConfigError(f"data.val_size: {val_size} leaves no training images ({cfg.data.name!r} has "
                          f"{info.train_size:,} official training images); use fewer than {info.train_size}")


def _trackers_installed(p: Planned) -> None:
    tc = p.cfg.train
    if tc.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard: true needs the tensorboard package, which is not installed; "
                          "pip install 'cnnlab[tensorboard]' (or tensorboard), or set train.tensorboard to false")
    if tc.mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"train.mlflow: {tc.mlflow} needs the mlflow package, which is not installed; "
                          "pip install 'cnnlab[mlflow]' (or mlflow), or set train.mlflow to null")
    if tc.mlflow:
        check_mlflow_database(tc.mlflow)


def _schedule_acts(p: Planned) -> None:
    check_schedule(p.cfg)


def _weights_exist(p: Planned) -> None:
    model = p.cfg.model
    if model.pretrained and model.weights_path:
        raise ConfigError("model.weights_path: set together with model.pretrained; choose one source of weights")
    for field in ("weights_path", "init_from"):
        path = getattr(model, field)
        if path is not None and not Path(path).expanduser().exists():
            raise ConfigError(f"model.{field}: {path} does not exist")


# In this order (a config with two problems is told the first): the network, the data, the extras, the weights.
CONFIG_RULES = (_loss_takes_the_output, _whitening_needs_its_layer, _finetune_stage_exists, _named_layers_exist,
                _resize_fits_the_data, _images_big_enough, _reflect_padding_fits, _validation_leaves_training,
                _trackers_installed, _schedule_acts, _weights_exist)


SQLITE_HEADER = b"SQLite format 3\x00"


def check_mlflow_database(uri: str) -> None:
    """An ``sqlite:///`` store (``train.mlflow``, made absolute at load) must name a database file that MLflow
    can create or open: in a folder that exists, not a folder, not some other kind of file. Checked at load,
    so a mistyped path stops the run before it trains instead of warning once it has started."""
    path = sqlite_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"train.mlflow: {uri} names the folder {path}, not a database file; name a file in it, "
                          f"e.g. sqlite:///{path / 'mlflow.db'} (MLflow creates it)")
    if not path.parent.is_dir():
        raise ConfigError(f"train.mlflow: the database {path} would go in the folder {path.parent}, which does not "
                          f"exist (MLflow creates the database file, not its folder); create it (mkdir -p "
                          f"{path.parent}) or name a database in an existing folder, e.g. sqlite:///mlflow.db "
                          "(in the folder cnnlab starts in)")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # MLflow creates it
    except OSError as e:
        raise ConfigError(f"train.mlflow: cannot read the database {path} ({e.strerror}); name a database file "
                          "cnnlab can read and write") from None
    if head and head != SQLITE_HEADER:
        raise ConfigError(f"train.mlflow: {path} is a file but not an SQLite database; name a new file (MLflow "
                          "creates it) or an existing MLflow database")


def _min_size_with(builder, num_classes: int, in_channels: int, options: dict) -> int:
    """The smallest input the network built with only these options takes (built on the meta device)."""
    try:
        with torch.device("meta"):
            return info_of(builder(num_classes=num_classes, in_channels=in_channels, **options)).min_input_size
    except (ValueError, TypeError, ConfigError):
        return 0


# ----------------------------------------------------------------------------- schedules
# The trainer steps a schedule once per epoch (sched.interval=epoch: ceil(train.epochs) steps in a run)
# or once per iteration (interval=step: round(train.epochs × iterations per epoch) steps). A warm-up
# (sched.warmup_steps, counted in the same scheduler steps) comes first and delays the schedule's own
# steps by that many. A schedule that cannot take effect within those steps is refused; one that can
# but looks like a slip is a warning.

LR_FLOOR = 1e-6  # a decayed rate below this × optim.lr: warn (training has effectively stopped)


def training_images(cfg: Config) -> int | None:
    """The number of training images a run will use, when the data set's sizes are known without reading it."""
    info = dataset_info(cfg.data.name)
    if info.train_size is None:
        return None
    val = cfg.data.val_size if cfg.data.val_size is not None else (
        info.default_val_size if info.default_val_size is not None else info.train_size // 10)
    n = max(0, info.train_size - val)
    return min(n, cfg.data.train_limit) if cfg.data.train_limit is not None else n


def scheduler_steps(cfg: Config, n_train: int | None) -> int | None:
    """How many times the trainer steps the schedule in the whole run (None: unknown before reading the data)."""
    epochs = cfg.train.epochs
    if cfg.sched.interval == "epoch":
        return math.ceil(epochs)
    if n_train is None:
        return None
    per_epoch = math.ceil(max(1, math.ceil(n_train / cfg.train.batch_size)) / cfg.train.accumulate)  # optimizer steps
    return max(1, round(epochs * per_epoch)) if epochs > 0 else 0


def schedule_problems(cfg: Config, n_train: int | None = None) -> tuple[list[str], list[str]]:
    """(impossible, suspicious) messages about the schedule over this run's length, each naming its field."""
    s, tc = cfg.sched, cfg.train
    errors: list[str] = []
    warnings: list[str] = []
    total = scheduler_steps(cfg, n_train)
    if tc.epochs == 0 or total is None:
        return errors, warnings
    unit = "epoch" if s.interval == "epoch" else "iteration" if tc.accumulate == 1 else "optimizer step"
    how = (f"with sched.interval={s.interval} the schedule steps once per {unit}, {total} time"
           f"{'s' if total != 1 else ''} in this run (train.epochs={tc.epochs:g}"
           + (f", {n_train:,} training images, batch size {tc.batch_size}" if s.interval == "step" else "")
           + (f", {tc.accumulate} batches a step" if s.interval == "step" and tc.accumulate > 1 else "") + ")")
    warm = s.warmup_steps if s.name not in ("none", "plateau") else 0
    after = f" after the {warm} warm-up steps" if warm else ""
    room = total - warm  # scheduler steps left to the schedule itself

    if s.warmup_steps and s.name in ("none", "plateau"):
        warnings.append(f"sched.warmup_steps={s.warmup_steps} is ignored with sched.name={s.name} (a warm-up only "
                        "precedes step, multistep, exponential, cosine and onecycle schedules)")
    if warm and warm >= total:
        errors.append(f"sched.warmup_steps: {warm} is not shorter than the run: {how}, so the warm-up would never "
                      f"end and the schedule never start; use at most {max(0, total - 1)} or train longer")
    elif warm and warm > total / 2:
        warnings.append(f"sched.warmup_steps={warm} takes more than half of the run ({how})")
    if warm and s.interval == "epoch":
        warnings.append(f"sched.warmup_steps={warm} counts scheduler steps, which are epochs with sched.interval=epoch")

    if s.name == "multistep":
        late = [m for m in s.milestones if m >= room]
        if late:
            errors.append(
                f"sched.milestones: {', '.join(map(str, late))} {'is' if len(late) == 1 else 'are'} past the end of "
                f"the run: {how}, and a milestone m lowers the rate after the m-th step{after}, so only milestones "
                f"below {room} take effect; lower them or train longer")
        decays = sum(m < room for m in s.milestones)
    elif s.name == "step":
        if s.step_size >= room:
            errors.append(
                f"sched.step_size: {s.step_size} is not shorter than the run: {how}, so the rate would never be "
                f"lowered{after}; use a step_size below {room} or train longer")
        decays = max(0, (room - 1) // s.step_size)
    elif s.name == "exponential":
        decays = max(0, room - 1)
        if decays == 0:
            warnings.append(f"sched.name=exponential never lowers the rate: {how}")
    elif s.name == "onecycle":
        # OneCycleLR rises from max_lr/25 for pct_start × N steps, then anneals to ~0; the run sees one rate
        # per step. A cycle needs a rise of more than one step (pct_start × N > 1: torch divides by
        # pct_start × N − 1, which is zero at exactly 1) and at least three steps (low, peak, falling).
        if room < 3 or s.pct_start * room <= 1:
            need = max(3, math.floor(1 / s.pct_start) + 1)
            errors.append(
                f"sched.name: onecycle cannot make a cycle here: {how}{after}, and one cycle (a rise from "
                f"max_lr/25 over sched.pct_start={s.pct_start:g} of the steps, then a fall to ~0) needs at least 3 "
                f"steps and a rise longer than one step (pct_start × steps > 1); with less the run sits at "
                f"a few fixed rates. Use sched.interval=step, at least {need + warm} "
                f"{'epochs' if s.interval == 'epoch' else 'steps'}, or a larger sched.pct_start")
        decays = 0
    else:
        decays = 0
    if s.name == "cosine" and room < 2:
        warnings.append(f"sched.name=cosine never changes the rate: {how}; use sched.interval=step")
    if s.name in ("step", "multistep", "exponential") and decays:
        if s.gamma == 1:
            warnings.append(f"sched.gamma=1 with sched.name={s.name}: the rate never changes")
        elif s.gamma ** decays < LR_FLOOR:
            warnings.append(f"sched.{'step_size' if s.name == 'step' else 'gamma'}: the rate is multiplied by "
                            f"{s.gamma:g} {decays} times ({how}), down to {s.gamma ** decays:.1e} × optim.lr; "
                            "check sched.interval")
    return errors, warnings


def check_schedule(cfg: Config, n_train: int | None = None) -> list[str]:
    """Refuse a schedule that cannot do what it says over this run (ConfigError); return the warnings."""
    if n_train is None:
        n_train = training_images(cfg)
    errors, warnings = schedule_problems(cfg, n_train)
    if errors:
        raise ConfigError(f"invalid config: {'; '.join(errors)}")
    return warnings


# ----------------------------------------------------------------------------- warnings: the run goes on


def double_softmax(output_kind: str | None, loss_name: str | None) -> bool:
    """A model that ends in a softmax trained with cross_entropy, which applies log-softmax again.
    One rule for the warning at the start of a run and the run doctor's finding."""
    return output_kind == "probs" and loss_name == "cross_entropy"


def config_warnings(cfg: Config, output_kind: str, device: torch.device) -> list[str]:
    """Settings that work but are probably not what was meant (printed and kept in summary.json)."""
    out = []
    if double_softmax(output_kind, cfg.loss.name):
        out.append("the model ends in a softmax and is trained with cross_entropy, which applies log-softmax "
                   "again (a double softmax): gradients shrink and training slows; set model.softmax_output=false")
    facts = runtime.device_facts(device)
    used, _ = runtime.resolve_precision(cfg.train.precision, facts)  # auto never picks an emulated precision
    if used == "fp16" and device.type == "cpu":
        out.append("train.precision=fp16 on a CPU is emulated and very slow; use auto (or bf16 where native)")
    if used == "bf16" and device.type == "cpu" and not runtime.native_cpu_bf16(facts):
        out.append("train.precision=bf16 on this CPU (no AVX-512 BF16 or AMX) is emulated and slower than fp32; "
                   "use auto, which picks fp32 here")
    return out
