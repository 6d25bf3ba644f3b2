"""Checks of a whole config that need the registries: combinations that cannot work.

Field types and ranges are checked by the pydantic models in :mod:`cnnlab.config`;
this module catches what only shows when fields meet: a model option the chosen
builder does not take, an ``nll`` loss on a model that outputs raw logits,
``finetune=layer3`` on a net without stages, a resize below what the network
accepts, a validation split as large as the training set. The network is built
on PyTorch's ``meta`` device, so these checks cost no memory and almost no time.
"""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import torch

from cnnlab.config import Config, ConfigError
from cnnlab.registry import LOSSES, MODELS


def check_config(cfg: Config) -> None:
    from cnnlab.data import dataset_info

    info = dataset_info(cfg.data.name)
    builder = MODELS.get(cfg.model.name)
    options = cfg.model.builder_options()
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    for key in options:
        if key not in accepted and not takes_any:
            allowed = [k for k in accepted if k not in ("num_classes", "in_channels")]
            raise ConfigError(f"model.{key}: not an option of model {cfg.model.name!r}; "
                              f"its options are: {', '.join(allowed) or 'none'}")

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

    output_kind = getattr(model, "output_kind", "logits")
    accepts = getattr(LOSSES.get(cfg.loss.name), "accepts", None)
    if cfg.model.features_at is None and accepts and output_kind not in accepts:
        raise ConfigError(
            f"loss.name: {cfg.loss.name!r} expects a model that outputs {' or '.join(accepts)}, but "
            f"{cfg.model.name!r} outputs {output_kind}; use {'nll' if output_kind == 'log_probs' else 'cross_entropy'}")

    ft = cfg.train.finetune
    stages = tuple(getattr(model, "stages", ()))
    if isinstance(ft, str) and ft.startswith("layer") and ft not in stages:
        raise ConfigError(f"train.finetune: {ft!r} needs a network with stages named layer1..; "
                          f"{cfg.model.name!r} has {list(stages) or 'no stages'}; use all, head or a list of "
                          "parameter-name prefixes")

    # features_at and finetune prefixes name layers: check them on the meta network too, so a sweep
    # refuses them before its first run instead of failing each run in cnnlab.transfer.
    from cnnlab.transfer import cut_points

    if cfg.model.features_at is not None and cfg.model.features_at not in cut_points(model):
        raise ConfigError(f"model.features_at: {cfg.model.features_at!r} is not a layer of {cfg.model.name!r} "
                          f"before its classifier; choose one of: {', '.join(cut_points(model))}")
    if isinstance(ft, list) and cfg.model.features_at is None:
        names = [n for n, _ in model.named_parameters()]
        for prefix in ft:
            p = str(prefix).rstrip(".")
            if not any(n == p or n.startswith(p + ".") for n in names):
                raise ConfigError(f"train.finetune: no parameter name of {cfg.model.name!r} starts with {p!r}; "
                                  f"top-level names are: {', '.join(sorted({n.split('.')[0] for n in names}))}")

    size = cfg.data.resize or info.image_size
    min_size = getattr(model, "min_input_size", 1)
    if size is not None and size < min_size:
        field = "data.resize" if cfg.data.resize else "data.name"
        raise ConfigError(f"{field}: {cfg.model.name!r} needs inputs of at least {min_size}×{min_size} pixels, "
                          f"but images would be {size}×{size}; set data.resize to {min_size} or more")

    aug = cfg.data.augment
    if size is not None and aug.crop_padding and aug.crop_mode == "reflect" and aug.crop_padding >= size:
        raise ConfigError(f"data.augment.crop_padding: {aug.crop_padding} with crop_mode=reflect must be smaller "
                          f"than the {size}×{size} images (reflection needs that many pixels to mirror); use at "
                          f"most {size - 1}, or crop_mode=zero")

    val_size = cfg.data.val_size if cfg.data.val_size is not None else info.default_val_size
    if info.train_size is not None and val_size is not None and val_size >= info.train_size:
        raise ConfigError(f"data.val_size: {val_size} leaves no training images ({cfg.data.name!r} has "
                          f"{info.train_size:,} official training images); use fewer than {info.train_size}")

    if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard: true needs the tensorboard package, which is not installed; "
                          "pip install 'cnnlab[tensorboard]' (or tensorboard), or set train.tensorboard to false")

    if cfg.model.pretrained and cfg.model.weights_path:
        raise ConfigError("model.weights_path: set together with model.pretrained; choose one source of weights")
    for field in ("weights_path", "init_from"):
        path = getattr(cfg.model, field)
        if path is not None and not Path(path).expanduser().exists():
            raise ConfigError(f"model.{field}: {path} does not exist")


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
    if cfg.train.precision == "fp16" and device.type == "cpu":
        out.append("train.precision=fp16 on a CPU is emulated and very slow; use bf16")
    return out
