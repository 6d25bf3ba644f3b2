"""Where a run's weights come from and which of them train: the transfer-learning layer.

:func:`build_model` turns ``cfg.model`` into a network: the registry builder, then its
starting weights (``pretrained: imagenet`` through torchvision's own weights files and
cache, ``weights_path`` for a torchvision-format state dict, ``init_from`` for a cnnlab run
folder or checkpoint), then ``features_at`` (the network cut after a named layer, followed
by global average pooling and a new linear classifier). Every file is read with
``torch.load(weights_only=True)``, so a checkpoint that would run code when unpickled is
refused. A checkpoint made for another number of classes gets a fresh classifier head; one
made for another architecture raises :class:`TransferError` naming the keys that differ.
:func:`apply_finetune` decides which parameters train (``train.finetune``),
:func:`set_train_mode` keeps batch-norm statistics of frozen parts frozen, :func:`param_groups`
gives the head its own learning rate, and :func:`split_frozen` lets the trainer compute the
features of a frozen backbone once instead of at every step.
"""
from __future__ import annotations

import socket
import urllib.error
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

from cnnlab.registry import MODELS, attach_info, find_info, info_of
from cnnlab.runs import why_not_loadable

DOWNLOAD_TIMEOUT_S = 60  # per socket operation, so a black-holed network fails instead of hanging
SHOWN_KEYS = 5  # mismatched keys listed in an error


class TransferError(RuntimeError):
    """Weights that cannot be loaded into this network, or a freeze policy it cannot follow."""


# ============================================================================= building


def build_model(cfg, num_classes: int, in_channels: int, *,
                image_size: Union[int, tuple[int, int], None] = None) -> tuple[nn.Module, list[str]]:
    """The network of ``cfg.model`` with its starting weights, plus log lines saying what was loaded.

    ``image_size`` (the side of the images the model will see) lets lazy layers get their size
    now; when it is None it is taken from ``data.resize`` or the data set's known size, and
    when that is unknown too (image folders) the first forward pass sizes them.
    """
    mc = cfg.model
    log: list[str] = []
    if image_size is None:
        image_size = cfg.data.resize or _dataset_image_size(cfg.data.name)
    model = MODELS.get(mc.name)(num_classes=num_classes, in_channels=in_channels, **mc.builder_options())
    # sized before loading, so that a checkpoint's layer shapes are compared with the real ones
    materialize(model, in_channels, image_size)
    if mc.pretrained and mc.weights_path:
        raise TransferError("model.pretrained and model.weights_path both set: choose one source of weights")
    if mc.pretrained == "imagenet":
        log += load_imagenet(model)
    elif mc.weights_path:
        log += load_state(model, read_weights(mc.weights_path, "model.weights_path"), f"{mc.weights_path}",
                          built_as=mc.name)

    run_state, run_file = (None, None)
    if mc.init_from:
        run_file = run_checkpoint_path(mc.init_from)
        run_state = read_weights(run_file, "model.init_from")
        if _trained_with_features_at(run_state) is None:  # a whole-network checkpoint: load before any cut
            log += load_state(model, _model_state(run_state), str(run_file), _trained_model_name(run_state),
                              mc.name)
            run_state = None

    if mc.features_at:
        model = cut_at(model, mc.features_at, num_classes, in_channels, image_size)
        log.append(f"features_at={mc.features_at}: {mc.name} cut after {mc.features_at}, then global average "
                   f"pooling and a new linear classifier `fc`")
        materialize(model, in_channels, image_size)  # the new head's input size

    if run_state is not None:  # a checkpoint of a features_at run fits the cut network
        log += load_state(model, _model_state(run_state), str(run_file), _trained_model_name(run_state),
                          f"{mc.name} cut at {mc.features_at}")
    return model, log


def _dataset_image_size(name: str) -> Optional[int]:
    from cnnlab.data import dataset_info

    return dataset_info(name).image_size


def materialize(model: nn.Module, in_channels: int, image_size: Union[int, tuple[int, int], None]) -> None:
    """Give lazy layers their sizes with one dummy forward (no gradients, no BN statistics touched);
    with ``image_size`` None they wait for the first real forward."""
    if image_size is None:
        return
    if not any(is_lazy(p) for p in model.parameters()) and not any(is_lazy(b) for b in model.buffers()):
        return
    device = next((p.device for p in model.parameters() if not is_lazy(p)), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    model.eval()  # eval: batch norm must not update its statistics on zeros
    try:
        with torch.no_grad():
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        for m, mode in modes.items():
            m.training = mode


# ============================================================================= reading weights


def read_weights(path: Union[str, Path], field: str) -> dict:
    """A state dict or checkpoint, read safely (``weights_only=True``) onto the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferError(f"{field}: {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for truncated, foreign or unsafe files
        raise TransferError(f"{field}: refused {path}: it {why_not_loadable(path, e)}. cnnlab loads only "
                            "weights-only files: save weights as a plain state dict "
                            "(torch.save(model.state_dict(), path))") from None
    if not isinstance(state, dict):
        raise TransferError(f"{field}: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def run_checkpoint_path(init_from: Union[str, Path]) -> Path:
    """``init_from`` names a run folder (its best.pt is used) or a checkpoint file."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise TransferError(f"model.init_from: {path} has no best.pt (a run writes it at its first "
                                "evaluation); point at a finished run folder or at a .pt file")
        return best
    return path


def _model_state(ckpt: dict) -> dict:
    # A cnnlab checkpoint keeps the weights under "model"; other tools often use "state_dict".
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def _ckpt_model_config(ckpt: dict) -> dict:
    config = ckpt.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def _trained_with_features_at(ckpt: dict) -> Optional[str]:
    return _ckpt_model_config(ckpt).get("features_at")


def _trained_model_name(ckpt: dict) -> Optional[str]:
    return _ckpt_model_config(ckpt).get("name")


# ============================================================================= ImageNet weights


def imagenet_weights(model: nn.Module):
    """torchvision's default ImageNet weights enum entry for a zoo network."""
    import torchvision

    from cnnlab.models.torchvision_zoo import ZOO

    name = info_of(model).torchvision_name
    if name is None:
        raise TransferError(f"model.pretrained=imagenet: ImageNet weights exist only for torchvision's networks "
                            f"({', '.join(ZOO)}), not for {type(model).__name__}")
    return torchvision.models.get_model_weights(name).DEFAULT


def load_imagenet(model: nn.Module) -> list[str]:
    """Load torchvision's ImageNet weights from its cache ($TORCH_HOME/hub/checkpoints), downloading
    them there if they are missing and the network allows."""
    weights = imagenet_weights(model)
    file_name = Path(urlparse(weights.url).path).name
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    old_timeout = socket.getdefaulttimeout()
    if old_timeout is None:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state = weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise TransferError(
            f"model.pretrained=imagenet: torchvision's ImageNet weights for {info_of(model).torchvision_name} "
            f"({weights}) are not in {folder} and could not be downloaded from {weights.url} ({reason}). On a "
            f"machine with internet access download that URL and place the file as {folder / file_name} (the folder is "
            "$TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch), or set model.weights_path "
            "to a copy of it") from None
    except Exception as e:  # noqa: BLE001 - a truncated or unsafe cache file
        raise TransferError(f"model.pretrained=imagenet: refused {folder / file_name}: it "
                            f"{why_not_loadable(folder / file_name, e)}; delete it and place a complete copy there"
                            ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return [f"loaded torchvision's {weights} ImageNet weights ({file_name})"] + load_state(model, state, file_name)


# ============================================================================= fitting a state dict


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def load_state(model: nn.Module, state: dict, source: str, trained_as: Optional[str] = None,
               built_as: Optional[str] = None) -> list[str]:
    """Copy ``state`` into ``model``; a head of another size is left fresh, a first conv made for
    RGB is summed to one channel for grey input, anything else that differs is an error."""
    target = model.state_dict()
    info = info_of(model)
    head, input_conv = info.head_name, info.input_conv
    log: list[str] = []
    use: dict[str, torch.Tensor] = {}
    unexpected = [k for k in state if k not in target]
    # BN's step counter is absent from old torchvision files and carries no learned value.
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    reshaped: list[str] = []
    for key, value in state.items():
        if key not in target:
            continue
        want = target[key]
        if not isinstance(value, torch.Tensor):
            reshaped.append(f"{key} (not a tensor)")
        elif is_lazy(want) or value.shape == want.shape:
            use[key] = value
        elif head and _under(key, head):
            if key.endswith("weight"):
                log.append(f"{source}: the classifier `{head}` has {value.shape[0]} outputs there, this run needs "
                           f"{want.shape[0]}: replaced by a freshly initialised one")
        elif input_conv and key == f"{input_conv}.weight" and value.ndim == 4 and want.ndim == 4 \
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
            use[key] = _adapt_channels(value, want.shape[1])
            how = "summed over the colour channels" if want.shape[1] == 1 else "averaged and repeated"
            log.append(f"{source}: first conv `{input_conv}` takes {value.shape[1]} channels there and "
                       f"{want.shape[1]} here: {how}")
        elif input_conv and _under(key, input_conv):
            if key.endswith("weight"):
                log.append(f"{source}: first conv `{input_conv}` is {tuple(value.shape)} there and "
                           f"{tuple(want.shape)} here (another stem): it keeps its fresh initialisation")
        else:
            reshaped.append(f"{key} ({list(value.shape)} there, {list(want.shape)} here)")
    if unexpected or missing or reshaped:
        parts = []
        for what, keys in (("missing from the file", missing), ("not in this model", unexpected),
                           ("with other shapes", reshaped)):
            if keys:
                shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
                parts.append(f"{len(keys)} keys {what}: {shown}")
        built = built_as or info.torchvision_name or type(model).__name__
        origin = f" (it was trained as {trained_as!r})" if trained_as else ""
        raise TransferError(f"{source} does not fit the {built!r} network built here{origin}: " + "; ".join(parts)
                            + ". It was saved from another architecture or other model options.")
    model.load_state_dict(use, strict=False)
    return log


def _adapt_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    # Summing RGB filters gives a grey filter that responds to a grey image as the RGB filter
    # did to the same image repeated over three channels.
    if channels == 1:
        return weight.sum(1, keepdim=True)
    return weight.mean(1, keepdim=True).repeat(1, channels, 1, 1) * (weight.shape[1] / channels)


# ============================================================================= features at a layer


class _HeadReached(Exception):
    """Raised by a hook to stop a forward pass at a layer, carrying that layer's input or output."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


class GlobalPool(nn.Module):
    """Average over the spatial positions of a feature map; a flat input passes through flattened."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) if x.ndim == 4 else x.flatten(1)


def cut_points(model: nn.Module) -> list[str]:
    """Layer names ``features_at`` accepts: the top-level children before the classifier head and,
    inside Sequential containers among them, their numbered parts."""
    head_top = info_of(model).head_name.split(".")[0]
    names = []
    for name, child in model.named_children():
        if name == head_top:
            break
        names.append(name)
        if isinstance(child, nn.Sequential):
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
    return names


def cut_at(model: nn.Module, layer: str, num_classes: int, in_channels: int,
           image_size: Union[int, tuple[int, int], None] = None) -> nn.Sequential:
    """``model`` up to and including ``layer`` → global average pool → new linear ``fc``.

    The kept layers run one after the other, in the order the network defines them. That
    is the order its forward() calls them in for the ResNets, VGG, AlexNet and the LeNets,
    but not for every network, so the cut is checked once: on a random batch it must give
    the very output ``layer`` gives inside the whole network. Kept layers keep their names,
    so weights saved from the whole network load into the cut one (and stage names such as
    ``layer3`` still work for ``train.finetune``).
    """
    allowed = cut_points(model)
    if layer not in allowed:
        raise TransferError(f"model.features_at: {layer!r} is not a layer of this network before its classifier; "
                            f"choose one of: {', '.join(allowed)}")
    top, _, sub = layer.partition(".")
    kept: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name != top:
            kept.append((name, child))
            continue
        if sub:
            parts = []
            for sub_name, part in child.named_children():
                parts.append((sub_name, part))
                if sub_name == sub:
                    break
            child = nn.Sequential(OrderedDict(parts))
        kept.append((name, child))
        break
    names = {n for n, _ in kept}
    if names & {"global_pool", "fc"}:
        raise TransferError(f"model.features_at: cannot cut at {layer!r}: the kept part has a layer named "
                            "global_pool or fc")
    if not _cut_matches(model, kept, layer, in_channels, image_size):
        raise TransferError(f"model.features_at: {type(model).__name__} does not run its layers in the order it "
                            f"defines them (or transforms data between them), so it cannot be cut at {layer!r} "
                            "by keeping the layers before it")
    probe = nn.Sequential(OrderedDict([*kept, ("global_pool", GlobalPool()), ("fc", nn.LazyLinear(num_classes))]))
    info = info_of(model)
    # the cut network: a new linear head, the stages it kept; no ImageNet weights or whitening init of its own
    return attach_info(probe, info.but(head_name="fc", output_kind="logits", features_at=layer,
                                       stages=tuple(s for s in info.stages if s in names),
                                       torchvision_name=None, needs_whitening_init=False))


def _cut_matches(model: nn.Module, kept: list[tuple[str, nn.Module]], layer: str, in_channels: int,
                 image_size: Union[int, tuple[int, int], None]) -> bool:
    """Does running ``kept`` in order reproduce what ``layer`` outputs inside ``model``?"""
    first = next(iter(model.parameters()), None)
    if first is None or first.is_meta:
        return True  # built for shapes only (cnnlab.config.rules): checked when built for real
    has_lazy = any(is_lazy(p) for p in model.parameters())
    if image_size is None and has_lazy:
        return True  # a forward at a guessed size would size the lazy layers wrongly (only our in-order nets)
    info = info_of(model)
    size = image_size or max(info.min_input_size, min(info.input_size or 32, 64))
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, in_channels, h, w, generator=torch.Generator().manual_seed(0)).to(first.device)

    def stop(module, inputs, output):  # nothing after the cut needs to run
        raise _HeadReached(output)

    modes = {m: m.training for m in model.modules()}
    hook = model.get_submodule(layer).register_forward_hook(stop)
    model.eval()
    try:
        with torch.no_grad():
            try:
                model(x.clone())
                return False  # the layer never ran
            except _HeadReached as reached:
                out = reached.features
            hook.remove()  # the kept part holds the same layer object
            try:
                mine = nn.Sequential(OrderedDict(kept))(x.clone())
            except RuntimeError:  # e.g. a layer meets the channel count of another one
                return False
    finally:
        hook.remove()
        for m, mode in modes.items():
            m.training = mode
    return isinstance(out, torch.Tensor) and out.shape == mine.shape and torch.allclose(out, mine, atol=1e-5)


# ============================================================================= what trains


def apply_finetune(model: nn.Module, finetune: Union[str, list[str]], freeze_bn: Optional[bool] = None) -> None:
    """Set ``requires_grad`` by ``train.finetune``.

    ``all`` / ``none``; ``head`` (the classifier, ``info_of(model).head_name``); ``layer1``..``layer4``
    (that stage and the head, for networks with such stages); or a list of parameter-name
    prefixes (``[layer4, fc]``). ``freeze_bn`` (``train.freeze_bn``) is remembered for
    :func:`set_train_mode`: None keeps batch norm of frozen parts in eval mode, True keeps
    all batch norm in eval mode, False lets all of it update its statistics.
    """
    names = [n for n, _ in model.named_parameters()]
    info = info_of(model)
    head = info.head_name
    if finetune == "all":
        chosen = set(names)
    elif finetune == "none":
        chosen = set()
    elif finetune == "head" or (isinstance(finetune, str) and finetune.startswith("layer")):
        prefixes = [head]
        if finetune != "head":
            stages = info.stages
            if finetune not in stages:
                raise TransferError(f"train.finetune={finetune}: this network has "
                                    f"{'stages ' + ', '.join(stages) if stages else 'no stages'}; use all, head "
                                    "or a list of parameter-name prefixes")
            prefixes.append(finetune)
        chosen = {n for n in names if any(_under(n, p) for p in prefixes)}
    elif isinstance(finetune, (list, tuple)):
        chosen = set()
        for prefix in finetune:
            prefix = str(prefix).rstrip(".")
            hits = {n for n in names if _under(n, prefix)}
            if not hits:
                tops = sorted({n.split(".")[0] for n in names})
                raise TransferError(f"train.finetune: no parameter name starts with {prefix!r}; top-level "
                                    f"names are: {', '.join(tops)}")
            chosen |= hits
    else:
        raise TransferError(f"train.finetune: {finetune!r} is not all, none, head, layer1..layer4 or a list")
    for name, p in model.named_parameters():
        # attribute, not requires_grad_(): lazy parameters accept only this before they get their size
        p.requires_grad = name in chosen
    attach_info(model, info.but(freeze_bn=freeze_bn))


def frozen_batch_norms(model: nn.Module) -> list[nn.Module]:
    """Batch-norm layers that :func:`set_train_mode` keeps in eval mode."""
    info = find_info(model)  # None for the head alone (split_frozen's rest), which has no batch norm
    policy = info.freeze_bn if info is not None else None
    if policy is False:
        return []
    out = []
    for parent in model.modules():
        for child in parent.children():
            if isinstance(child, _BatchNorm):
                # a BN without affine parameters belongs to the part its container belongs to
                params = list(child.parameters()) or list(parent.parameters())
                if policy is True or (params and not any(p.requires_grad for p in params)):
                    out.append(child)
    return out


def set_train_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, except that batch norm in frozen parts stays in eval mode, so
    its running statistics (part of the pretrained weights) do not drift. Use it instead of
    ``model.train()`` wherever the trainer switches modes."""
    model.train(training)
    if training:
        for bn in frozen_batch_norms(model):
            bn.eval()


def param_groups(model: nn.Module, optim_cfg) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters.

    ``optim.head_lr`` gives the classifier head its own learning rate (Study B: backbone 0.001,
    head 0.1); ``optim.no_decay_norm_bias`` puts 1-D parameters (biases and norm weights) in
    groups without weight decay; ``optim.norm_bias_lr_scale`` gives the norm layers' shifts airbench's
    larger learning rate. Each group has a ``name`` for logs.
    """
    head = info_of(model).head_name
    head_ids = {id(p) for p in model.get_submodule(head).parameters()} if head and optim_cfg.head_lr else set()
    scale = optim_cfg.norm_bias_lr_scale
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm))
              and isinstance(m.bias, nn.Parameter)} if scale != 1 else set()
    groups: dict[str, dict[str, Any]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head, is_shift = id(p) in head_ids, id(p) in shifts
        no_decay = optim_cfg.no_decay_norm_bias and p.ndim <= 1
        key = ("head" if is_head else "body") + ("_norm_bias" if is_shift else "") + ("_no_decay" if no_decay else "")
        if key not in groups:
            groups[key] = {"params": [], "name": key}
            if is_head:
                groups[key]["lr"] = optim_cfg.head_lr
            if is_shift:  # optim.norm_bias_lr_scale: lr × scale, decay ÷ scale (their product unchanged)
                groups[key]["lr"] = (optim_cfg.head_lr if is_head else optim_cfg.lr) * scale
                groups[key]["weight_decay"] = optim_cfg.weight_decay / scale
            if no_decay:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(p)
    if not groups:  # finetune=none (zero-shot evaluation): an optimizer that has nothing to do
        return [{"params": [], "name": "nothing_trainable"}]
    return list(groups.values())


# ============================================================================= frozen backbone, once


class HeadInput(nn.Module):
    """The network up to its classifier head: returns what the head would receive."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head_name = info_of(model).head_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def stop(module, args):  # the head is the last layer: nothing after it is needed
            raise _HeadReached(args[0])

        hook = self.model.get_submodule(self.head_name).register_forward_pre_hook(stop)
        try:
            self.model(x)
        except _HeadReached as reached:
            return reached.features
        finally:
            hook.remove()
        raise TransferError(f"{type(self.model).__name__}'s forward never called its head {self.head_name!r}")


class HeadOnly(nn.Module):
    """The classifier head plus the output activation the whole model applies after it."""

    def __init__(self, head: nn.Module, output_kind: str):
        super().__init__()
        self.head = head
        self.output_kind = output_kind

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features)
        if self.output_kind == "probs":
            return out.softmax(1)
        if self.output_kind == "log_probs":
            return out.log_softmax(1)
        return out


def split_frozen(model: nn.Module, example: torch.Tensor) -> tuple[Optional[nn.Module], nn.Module]:
    """``(backbone, rest)`` when only the head trains, else ``(None, model)``.

    Then ``rest(backbone(x)) == model(x)`` in eval mode, and the trainer may run ``backbone``
    once over every image (under ``torch.inference_mode``, in eval mode) and train ``rest``
    on the stored features: the same updates as full training, because a frozen backbone
    without dropout and with frozen batch norm gives every image the same features every
    epoch. That holds only without training-time augmentation, which changes the images
    each epoch: the trainer must not precompute then. ``rest`` shares the head with ``model``,
    so ``model.state_dict()`` stays the checkpoint. Not split: networks with dropout or
    updating batch norm before the head (e.g. AlexNet/VGG's classifier dropout) and any run
    where something besides the head trains. With ``example`` (a preprocessed batch) the
    equality is checked numerically and a network that fails it is not split.
    """
    info = info_of(model)
    head = model.get_submodule(info.head_name)
    head_params = {id(p) for p in head.parameters()}
    outside = [p for p in model.parameters() if id(p) not in head_params]
    if not outside or any(p.requires_grad for p in outside) or not any(p.requires_grad for p in head.parameters()):
        return None, model
    head_modules = set(head.modules())
    frozen_bn = set(frozen_batch_norms(model))
    for m in model.modules():
        if m in head_modules:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return None, model
        if isinstance(m, _BatchNorm) and m not in frozen_bn:
            return None, model
    backbone, rest = HeadInput(model), HeadOnly(head, info.output_kind)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            same = torch.allclose(rest(backbone(example)), model(example), rtol=1e-4, atol=1e-5)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return (backbone, rest) if same else (None, model)


@torch.inference_mode()
def cached_features(backbone: nn.Module, splits, evaluator):
    """Run a frozen backbone once over every split; returns splits of features (same labels).

    ``evaluator`` (a :class:`cnnlab.training.scoring.Evaluator`) prepares the image batches and sets
    their size and precision."""
    from types import SimpleNamespace

    backbone.eval()
    out = {}
    for split in ("train", "val", "test"):
        x = getattr(splits, f"{split}_x")
        chunks = []
        for start in range(0, max(len(x), 1), evaluator.batch_size):  # an empty split still gives (0, d)
            with evaluator.autocast():
                chunks.append(backbone(evaluator.prepare(x[start:start + evaluator.batch_size])).float())
        out[f"{split}_x"] = torch.cat(chunks).clone()  # clone: usable outside inference mode
        out[f"{split}_y"] = getattr(splits, f"{split}_y")
    return SimpleNamespace(**out, num_classes=splits.num_classes, classes=splits.classes)
