"""The one run loader: a run folder's checkpoint as a network ready to use.

:func:`load_run` (the loader of ``cnnlab eval``, ``predict``, ``export``, ``explain`` and ``cnnlab.load``)
rebuilds a run's network from its checkpoint's own config (the EMA weights when the run kept an average) in
eval mode, computing in the run's precision as resolved on this device (one precision policy, the one
training used), with the preprocessing the run saved beside the weights (``"preprocess"``: classes, input
shape, channels, mean/std, resize policy; see :func:`cnnlab.data.augment.preprocess_record`). Images are
decoded by :mod:`cnnlab.data.decode`, the decoding training used, with the run's resize policy and
interpolation (:meth:`Transform.read`); :class:`Transform` turns such uint8 images into the normalised float
input. :class:`LoadedRun` predicts on raw images or on input already transformed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab import data as datamod
from cnnlab import runs
from cnnlab.config.load import build_config
from cnnlab.config.schema import ConfigError, apply_overrides
from cnnlab.data import DataError
from cnnlab.data.augment import preprocess_record, resize
from cnnlab.data.decode import decode_as_trained
from cnnlab.models import info_of, transfer
from cnnlab.training.calibration import log_probs_of, scaled_probs
from cnnlab.training.runtime import Compute, pick_device, plan_compute
from cnnlab.training.scoring import Evaluator

_LUMA = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)  # the weights data.channels=1 uses


# ----------------------------------------------------------------------------- the transform


class Transform:
    """What predict applies to an image: decode (:meth:`read`, as training decoded), then scale to 0..1 and
    normalise with the run's mean/std. ``transform(path_or_pil_or_uint8)`` gives one float
    ``[C, H, W]`` input; :meth:`batch` does a uint8 ``[N, c, h, w]`` batch (any channels / size:
    converted to the run's)."""

    def __init__(self, record: dict):
        self.record = record
        self.channels, self.height, self.width = record["input_shape"]
        self.mean = torch.tensor(record["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(record["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def __repr__(self) -> str:
        r = self.record
        policy = r.get('resize_policy', r.get('resize_mode'))
        return (f"Transform(input_shape={tuple(r['input_shape'])}, resize={policy!r}, "
                f"mean={[round(m, 4) for m in r['mean']]}, std={[round(s, 4) for s in r['std']]})")

    def read(self, source: Any) -> torch.Tensor:
        """A path or PIL image as the uint8 ``[C, H, W]`` the model's input is made from: decoded as the run's
        training decoded its images (:func:`cnnlab.data.decode.decode_as_trained`: its resize policy and
        interpolation, from the saved record)."""
        return decode_as_trained(source, self.record)

    def conform(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 batch in the run's channels and input size."""
        if x.shape[1] == 3 and self.channels == 1:
            x = (x.float() * _LUMA.to(x.device)).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        elif x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        bicubic = "bicubic" in (self.record.get("resize_mode"), self.record.get("interpolation"))
        return resize(x, (self.height, self.width), "bicubic" if bicubic else "bilinear")

    def batch(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        x = self.conform(x).float().div_(255)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            x = image if image.ndim == 3 else image.unsqueeze(0)
            if x.dtype != torch.uint8:
                raise TypeError(f"expected a uint8 image tensor [C, H, W], got {x.dtype}")
        else:
            x = self.read(image)
        return self.batch(x.unsqueeze(0))[0]


def to_probs(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Class probabilities from what a model returned (logits, log-probabilities or probabilities)."""
    return out.softmax(1) if kind == "logits" else out.exp() if kind == "log_probs" else out


# ----------------------------------------------------------------------------- a loaded run


@dataclass
class LoadedRun:
    """A trained run ready to use: ``model`` (a plain nn.Module in eval mode), ``classes``,
    ``input_shape`` (C, H, W), ``transform`` (what :meth:`predict` applies) and ``preprocess``
    (the saved record). :meth:`predict` takes raw images (paths, PIL images, uint8 arrays or tensors HW, HWC or
    CHW) and, with ``transformed=True``, float tensors already in the model's input form."""

    run_dir: Path
    model: nn.Module
    classes: list[str]
    input_shape: tuple[int, int, int]
    transform: Transform
    preprocess: dict
    output_kind: str
    config: Any  # the run's Config (the checkpoint's own: config.yaml beside it is only a copy to read)
    device: torch.device
    compute: Compute  # the run's train.precision and channels_last resolved here by the rule training used
    step: int | None = None
    temperature: float | None = None  # temperature scaling fitted on the validation split (summary.json calibration)

    def __repr__(self) -> str:
        return (f"LoadedRun({str(self.run_dir)!r}, model={self.config.model.name}, classes={len(self.classes)}, "
                f"input_shape={self.input_shape})")

    def probabilities(self, x: torch.Tensor, tta: bool = False, batch_size: int = 256,
                      transformed: bool = False, calibrated: bool = False) -> torch.Tensor:
        """Class probabilities ``[N, classes]`` of a uint8 batch (any channels / size), or with ``transformed``
        of a float batch already in the model's input form ``[N, C, H, W]`` (normalised with the run's mean and
        std); ``tta`` averages the run's test-time augmented views (``train.tta``); ``calibrated`` divides the
        log-probabilities by the run's fitted temperature before the softmax (the same argmax, softer or sharper)."""
        t = self.calibration_temperature() if calibrated else None
        mode = self.preprocess.get("tta", "none") if tta else "none"
        if tta and mode == "none":
            raise ConfigError(f"tta: the run {self.run_dir} was trained with train.tta=none, so there is no "
                              "test-time augmentation to apply")
        ev = self.evaluator(_as_given if transformed else self.transform.batch, batch_size, mode)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                o = ev.outputs(self.model, x[i:i + batch_size].to(self.device))
                kind = "log_probs" if mode != "none" else self.output_kind
                out.append(to_probs(o.float(), kind) if t is None else
                           scaled_probs(log_probs_of(o, kind), t).float())
        return torch.cat(out).cpu() if out else torch.zeros(0, len(self.classes))

    def calibration_temperature(self) -> float:
        """The temperature fitted on the validation split at the end of training, or a ConfigError saying why
        there is none (a run without validation split, one trained before calibration, another checkpoint)."""
        if self.temperature is None:
            raise ConfigError(f"calibrated: the run {self.run_dir} has no temperature fitted for this checkpoint "
                              "(summary.json calibration.temperature: fitted on the validation split for best.pt "
                              "at the end of training; none without a validation split or for other checkpoints)")
        return self.temperature

    def evaluator(self, preprocess, batch_size: int, tta: str = "none") -> Evaluator:
        """What scores this run's network here: in its :attr:`compute` (the one precision policy of eval,
        predict and cnnlab.load: the run's own setting, resolved on this device as its training resolved it)."""
        return Evaluator(preprocess, batch_size, self.compute.precision, self.device, self.output_kind,
                         len(self.classes), tta=tta, channels_last=self.compute.channels_last)

    def predict(self, images: Any, top_k: int = 3, tta: bool = False, transformed: bool = False,
                calibrated: bool = False) -> list[dict]:
        """Top-k classes of each image: a list of ``{"file", "class", "probability", "top": [(class, p), ...]}``.

        ``images`` is one image or a list of them. Raw images, decoded and resized as training decoded its
        images (the run's resize policy and interpolation; alpha over black): paths, PIL images, and uint8
        numpy arrays or tensors ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C = 1, 3 or 4; a 4-D uint8 array is
        a batch of such images). A float tensor or array is taken as input already transformed (scaled to 0..1
        and normalised with the run's mean and std, shape ``[C, H, W]`` or ``[N, C, H, W]`` at the run's input
        shape) only with ``transformed=True``; otherwise it is refused, since normalising it again would
        silently change every prediction. ``calibrated``: probabilities after the run's temperature scaling
        (:meth:`calibration_temperature`). An unreadable file raises DataError naming it."""
        if calibrated:
            self.calibration_temperature()  # refused before any image is read
        items = [images] if isinstance(images, (str, Path)) or not isinstance(images, (list, tuple)) else images
        raw, ready = [], []  # (position, name, uint8 [C, H, W]) and (position, float [C, H, W])
        for i, item in enumerate(items):
            where = "images" if len(items) == 1 and items is not images else f"images[{i}]"
            for image in _input_images(item, where, transformed, self.input_shape):
                if isinstance(image, torch.Tensor) and image.is_floating_point():
                    ready.append((len(raw) + len(ready), image))
                    continue
                try:
                    raw.append((len(raw) + len(ready), str(item) if isinstance(item, (str, Path)) else None,
                                self.transform.read(image)))
                except (OSError, ValueError, SyntaxError) as e:
                    raise DataError(f"{item if isinstance(item, (str, Path)) else where}: not a readable image "
                                    f"({short_reason(e)})") from None
        rows = self._rows([n for _, n, _ in raw], [x for _, _, x in raw], top_k, tta, calibrated=calibrated)
        rows += self._rows([None] * len(ready), [x for _, x in ready], top_k, tta, transformed=True,
                           calibrated=calibrated)
        order = [pos for pos, _, _ in raw] + [pos for pos, _ in ready]
        return [row for _, row in sorted(zip(order, rows), key=lambda pair: pair[0])]

    def _rows(self, names: list, decoded: list[torch.Tensor], top_k: int, tta: bool,
              transformed: bool = False, calibrated: bool = False) -> list[dict]:
        if not decoded:
            return []
        probs = self.probabilities(torch.stack(decoded), tta=tta, transformed=transformed, calibrated=calibrated)
        k = max(1, min(top_k, len(self.classes)))
        p, idx = probs.topk(k, dim=1)
        rows = []
        for name, pi, ii in zip(names, p.tolist(), idx.tolist()):
            top = [(self.classes[c], round(float(q), 6)) for c, q in zip(ii, pi)]
            rows.append({"file": name, "class": top[0][0], "probability": top[0][1], "top": top})
        return rows


def _as_given(x: torch.Tensor, generator=None) -> torch.Tensor:
    """The preprocessing of input that is already transformed: none."""
    return x


RAW_IMAGES = ("a path, a PIL image, or a uint8 numpy array / tensor of shape [H, W], [H, W, C] or [C, H, W] "
              "(C = 1, 3 or 4; [N, ...] for several)")


def _input_images(item: Any, where: str, transformed: bool, input_shape: tuple) -> list:
    """One item of ``LoadedRun.predict`` as what is decoded (paths, PIL images: uint8 arrays become PIL
    images, so they are resized as training resized) or float ``[C, H, W]`` tensors already transformed."""
    from PIL import Image

    if isinstance(item, (str, Path, Image.Image)):
        return [item]
    numpy_layout = isinstance(item, np.ndarray)
    if numpy_layout:
        try:
            item = torch.from_numpy(np.ascontiguousarray(item))
        except TypeError:  # object arrays, strings: torch has no such dtype
            raise ConfigError(f"{where}: a numpy array of {item.dtype} is no image; give {RAW_IMAGES}") from None
    if not isinstance(item, torch.Tensor):
        raise ConfigError(f"{where}: a {type(item).__name__} is not an image; give {RAW_IMAGES}")
    if item.is_floating_point():
        return _transformed(item, where, transformed, input_shape)
    if item.dtype != torch.uint8:
        raise ConfigError(f"{where}: a {item.dtype} tensor is no image; raw images are {RAW_IMAGES}, and a float "
                          "tensor already normalised with the run's mean/std is given with transformed=True")
    x = item.detach().cpu()
    batch = list(x) if x.ndim == 4 else [x] if x.ndim in (2, 3) else None
    if batch is None:
        raise ConfigError(f"{where}: a uint8 array of shape {tuple(x.shape)} is no image; give {RAW_IMAGES}")
    return [Image.fromarray(_hwc(image, where, numpy_layout).numpy()) for image in batch]


def _hwc(x: torch.Tensor, where: str, numpy_layout: bool) -> torch.Tensor:
    """A uint8 image as [H, W] or [H, W, C] for PIL: the channel axis is the first or the last one whose size
    is 1, 3 or 4; when both could be, a numpy array's is the last (HWC) and a tensor's the first (CHW)."""
    if x.ndim == 2:
        return x
    first, last = x.shape[0] in (1, 3, 4), x.shape[-1] in (1, 3, 4)
    if not (first or last):
        raise ConfigError(f"{where}: a uint8 image of shape {tuple(x.shape)} has no channel axis of 1, 3 or 4 "
                          f"(grey, RGB, RGBA) first or last; give {RAW_IMAGES}")
    hwc = x if last and (numpy_layout or not first) else x.permute(1, 2, 0)
    return hwc[..., 0] if hwc.shape[-1] == 1 else hwc.contiguous()


def _transformed(x: torch.Tensor, where: str, transformed: bool, input_shape: tuple) -> list[torch.Tensor]:
    """Float input: the model's input as it is, with ``transformed=True`` and the run's input shape; refused
    otherwise (a raw image must be uint8: a float one could be 0..1 or already normalised)."""
    shape = tuple(input_shape)
    if not transformed:
        raise ConfigError(f"{where}: a float array or tensor of shape "
                          f"{tuple(x.shape)} is ambiguous: it is taken as input already transformed (scaled to "
                          f"0..1 and normalised with the run's mean and std, shape {list(shape)}) only with "
                          f"transformed=True; a raw image is {RAW_IMAGES}")
    batch = [x] if x.ndim == 3 else list(x) if x.ndim == 4 else []
    if not batch or any(tuple(b.shape) != shape for b in batch):
        raise ConfigError(f"{where}: transformed input must have the run's input shape [C, H, W] = {list(shape)} "
                          f"(or [N, C, H, W]), got {list(x.shape)}")
    return [b.detach().float().cpu() for b in batch]


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str | torch.device | None = "cpu",
             overrides: dict | None = None) -> LoadedRun:
    """A run folder's checkpoint (``best.pt`` by default; a path to a .pt file works too) as a
    :class:`LoadedRun`: the network rebuilt from the checkpoint's own config (never fetching pretrained
    weights: the checkpoint holds them), in eval mode, with the EMA weights when the run kept them. The one
    loader of ``cnnlab eval``, ``predict``, ``export`` and ``cnnlab.load``. ``device`` None: the run's
    ``train.device`` resolved here; ``overrides``: settings that do not change the network
    (:data:`cnnlab.inference.predict.EVAL_OVERRIDES`, e.g. ``train.precision``), applied to the config first."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else run_dir / checkpoint
    if not run_dir.exists():
        raise ConfigError(f"{run_dir}: no such run folder")
    state = runs.load_checkpoint(path, map_location="cpu")  # onto the device by load_state_dict
    if "config" not in state or "model" not in state:
        raise runs.CheckpointError(f"{path} is not a cnnlab run checkpoint (it has no config or model)")
    try:  # the checkpoint's own settings first: a file whose settings cannot be built is named as the problem
        cfg = build_config(state["config"], str(path))
    except ConfigError as e:
        raise runs.CheckpointError(f"checkpoint {path}: the settings saved in it cannot rebuild its network ({e}); "
                                   "it was not written by this run, or was edited") from None
    if overrides:
        cfg = build_config(apply_overrides(cfg.to_dict(), overrides), "eval overrides")
    device = pick_device(cfg.train.device) if device is None else torch.device(device)
    record = state.get("preprocess") or _record_from_data(cfg)  # runs saved before the record existed
    record = datamod.check_preprocessing(record, path)  # a wrong-length mean, a std of 0: one paragraph
    c, h, w = record["input_shape"]
    weights = cfg.model.model_copy(update={"init_from": None, "pretrained": None, "weights_path": None})
    model, _ = transfer.build_model(cfg.model_copy(update={"model": weights}), len(record["classes"]), c,
                                    image_size=h if h == w else None)
    model.to(device)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        with torch.no_grad():  # lazy layers take their size from one input
            model.eval()(torch.zeros(1, c, h, w, device=device))
    model = runs.trained_network(model, state, path).eval()
    compute = plan_compute(cfg.train, model, device)
    if compute.channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedRun(run_dir=run_dir if run_dir.is_dir() else run_dir.parent, model=model,
                     classes=list(record["classes"]), input_shape=(c, h, w), transform=Transform(record),
                     preprocess=record, output_kind=info_of(model).output_kind, config=cfg, device=device,
                     compute=compute, step=state.get("step"), temperature=_temperature(path, state.get("step")))


def _temperature(checkpoint: Path, step) -> float | None:
    """The temperature summary.json records for this checkpoint (fitted on best.pt's weights: only a checkpoint of
    the same step gets it), or None."""
    summary = runs.read_summary(checkpoint.parent) or {}
    cal, best = summary.get("calibration"), summary.get("best")
    if not (isinstance(cal, dict) and isinstance(best, dict) and best.get("step") == step and step is not None):
        return None
    t = cal.get("temperature")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf") else None


def _record_from_data(cfg) -> dict:
    splits = datamod.load_splits(cfg.data, "cpu")
    return preprocess_record(splits, cfg.data, cfg.train.tta)


def short_reason(e: BaseException) -> str:
    """Why an image could not be read, on one line of at most 200 characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
