"""Batched image augmentations that run on the device, one call per batch.

Every function takes an NCHW batch (uint8 in 0..255 or floating point in 0..1)
and, where it is random, an explicit ``torch.Generator``, so that a run can be
replayed exactly. Randomness is drawn once per batch as small tensors of
per-sample parameters (crop offsets, flip decisions, jitter factors) on the
generator's own device and then moved to the batch's device, so a CPU generator
can drive augmentation of CUDA batches. The per-image semantics follow
torchvision's transforms (``RandomCrop(padding=...)``, ``RandomHorizontalFlip``,
``ColorJitter``, ``Resize(antialias=True)``), which the tests check image by
image, but no function loops over the samples in Python. Differences from
torchvision: colour jitter applies its four operations in a fixed order
(brightness, contrast, saturation, hue) instead of a random one, and an integer
``size`` in :func:`resize` means a square output, not "shorter edge".
:class:`Preprocess` chains them into the one per-batch pipeline a run uses (uint8
batch in, normalised float input out) and says whether it is random.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional, Union

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from cnnlab.config.schema import DataConfig
    from cnnlab.data.splits import Splits

Factor = Union[float, torch.Tensor]

# ITU-R 601-2 luma weights, the ones torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


# --------------------------------------------------------------------------- helpers


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW batch (4 dimensions), got shape {tuple(x.shape)}")


def _uniform(n: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """n uniform numbers in [0, 1), drawn on the generator's device (a CPU generator
    cannot fill a CUDA tensor), then moved to where the batch lives."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def _as_unit_float(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Float view of the batch on the 0..1 scale; also says whether it was uint8."""
    if x.dtype == torch.uint8:
        return x.float().div_(255), True
    if not x.is_floating_point():
        raise TypeError(f"expected a uint8 or floating-point batch, got {x.dtype}")
    return x, False


def _back(x: torch.Tensor, was_uint8: bool) -> torch.Tensor:
    if was_uint8:
        return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return x


def _per_sample(f: Factor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or an [N] tensor of factors, shaped to broadcast over NCHW."""
    if isinstance(f, torch.Tensor):
        if f.dim() == 0:
            return f.to(x.device, x.dtype)
        if f.shape != (x.shape[0],):
            raise ValueError(f"expected one factor per image ({x.shape[0]}), got shape {tuple(f.shape)}")
        return f.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return torch.tensor(float(f), device=x.device, dtype=x.dtype)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB float batch, [N,1,H,W]."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # f * a + (1 - f) * b, clipped to the valid range, like torchvision's _blend
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- crop


def pad(x: torch.Tensor, padding: int, mode: str = "zero") -> torch.Tensor:
    """Pad all four sides by ``padding`` pixels with zeros or by reflection
    (``reflect`` mirrors without repeating the edge pixel, like numpy/torchvision)."""
    _check_batch(x)
    if padding == 0:
        return x
    if mode == "zero":
        return F.pad(x, (padding,) * 4, mode="constant", value=0)
    if mode == "reflect":
        h, w = x.shape[-2:]
        if padding >= h or padding >= w:
            raise ValueError(f"reflect padding {padding} must be smaller than the image ({h}x{w})")
        return F.pad(x, (padding,) * 4, mode="reflect")
    raise ValueError(f"unknown padding mode {mode!r}; use 'zero' or 'reflect'")


def crop_offsets(
    n: int, padding: int, generator: Optional[torch.Generator], device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (top, left) corners of an unpadded-size window in a padded image:
    each uniform over 0..2*padding, as torchvision's RandomCrop draws them."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    tl = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=gen_device)
    tl = tl.to(device) if device is not None else tl
    return tl[0], tl[1]


def crop_at(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Cut a ``height`` x ``width`` window at a different corner for every image.

    One gather over the flattened pixels does the whole batch: for image n the
    source pixel of (i, j) is (top[n] + i) * W + left[n] + j.
    """
    _check_batch(padded)
    n, c, hp, wp = padded.shape
    dev = padded.device
    rows = top.to(dev).view(n, 1, 1) + torch.arange(height, device=dev).view(1, height, 1)
    cols = left.to(dev).view(n, 1, 1) + torch.arange(width, device=dev).view(1, 1, width)
    index = (rows * wp + cols).view(n, 1, height * width).expand(n, c, height * width)
    flat = padded.reshape(n, c, hp * wp)
    return flat.gather(2, index).view(n, c, height, width)


def random_crop(x: torch.Tensor, padding: int, generator: Optional[torch.Generator], mode: str = "zero") -> torch.Tensor:
    """Pad by ``padding`` (zero or reflect) and crop back to the input size at a
    random offset per image. Same draws as :func:`crop_offsets` with that generator."""
    _check_batch(x)
    if padding == 0:
        return x
    h, w = x.shape[-2:]
    padded = pad(x, padding, mode)
    top, left = crop_offsets(x.shape[0], padding, generator, x.device)
    return crop_at(padded, top, left, h, w)


# --------------------------------------------------------------------------- flip


def flip_mask(
    n: int, generator: Optional[torch.Generator], p: float = 0.5, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Which images to flip: True with probability ``p`` each."""
    return _uniform(n, generator, device or torch.device("cpu")) < p


def hflip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where ``mask`` is True."""
    _check_batch(x)
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def random_hflip(x: torch.Tensor, generator: Optional[torch.Generator], p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p`` (default 0.5)."""
    return hflip_where(x, flip_mask(x.shape[0], generator, p, x.device))


# --------------------------------------------------------------------------- colour


def adjust_brightness(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Multiply by ``factor`` (per image), clipped: 0 gives black, 1 the original."""
    xf, was_uint8 = _as_unit_float(x)
    return _back((xf * _per_sample(factor, xf)).clamp_(0.0, 1.0), was_uint8)


def adjust_contrast(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend each image with its mean grey level: 0 gives flat grey, 1 the original."""
    xf, was_uint8 = _as_unit_float(x)
    grey = _grey(xf) if xf.shape[1] == 3 else xf
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    return _back(_blend(xf, mean, _per_sample(factor, xf)), was_uint8)


def adjust_saturation(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend each RGB image with its own grey version: 0 gives grey, 1 the
    original. Single-channel images have no saturation and are returned as they are."""
    if x.shape[1] != 3:
        return x
    xf, was_uint8 = _as_unit_float(x)
    return _back(_blend(xf, _grey(xf), _per_sample(factor, xf)), was_uint8)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    # Elementwise max/min of the three planes: much cheaper than a reduction over dim 1.
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    grey = delta == 0  # hue is undefined there; 0 by convention
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(grey, torch.ones_like(delta), delta)
    # Which channel is the largest decides the sextant; ties resolve r, then g, then b.
    h = torch.where(
        maxc == r,
        (g - b) / d,
        torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d),
    )
    h = torch.where(grey, torch.zeros_like(h), torch.remainder(h / 6.0, 1.0))
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Closed form: channel(n) = v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6,
    # n = 5 for red, 3 for green, 1 for blue. Avoids branching on the sextant.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def adjust_hue(x: torch.Tensor, shift: Factor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5], per image). Single-channel
    images are returned unchanged, as torchvision does."""
    if x.shape[1] != 3:
        return x
    if not isinstance(shift, torch.Tensor) and not -0.5 <= float(shift) <= 0.5:
        raise ValueError(f"hue shift must be in [-0.5, 0.5], got {shift}")
    xf, was_uint8 = _as_unit_float(x)
    h, s, v = _rgb_to_hsv(xf)
    sh = _per_sample(shift, xf)
    sh = sh.view(-1, 1, 1) if sh.dim() == 4 else sh  # h has no channel dimension
    h = torch.remainder(h + sh, 1.0)
    return _back(_hsv_to_rgb(h, s, v), was_uint8)


def jitter_factors(
    n: int,
    generator: Optional[torch.Generator],
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    device: Optional[torch.device] = None,
) -> dict[str, Optional[torch.Tensor]]:
    """Per-image jitter factors with torchvision ColorJitter's ranges: brightness,
    contrast and saturation uniform in [max(0, 1 - v), 1 + v], hue uniform in
    [-hue, hue]. A strength of 0 gives None (the operation is skipped and draws
    nothing). Draws happen in the order brightness, contrast, saturation, hue."""
    device = device or torch.device("cpu")
    out: dict[str, Optional[torch.Tensor]] = {}
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
        if v == 0:
            out[name] = None
            continue
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
        out[name] = lo + (hi - lo) * _uniform(n, generator, device)
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    out["hue"] = None if hue == 0 else (2.0 * _uniform(n, generator, device) - 1.0) * hue
    return out


def color_jitter(
    x: torch.Tensor,
    generator: Optional[torch.Generator],
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image (fixed order)."""
    _check_batch(x)
    f = jitter_factors(x.shape[0], generator, brightness, contrast, saturation, hue, device=x.device)
    if all(v is None for v in f.values()):
        return x
    xf, was_uint8 = _as_unit_float(x)  # convert once, not once per operation
    if f["brightness"] is not None:
        xf = adjust_brightness(xf, f["brightness"])
    if f["contrast"] is not None:
        xf = adjust_contrast(xf, f["contrast"])
    if f["saturation"] is not None:
        xf = adjust_saturation(xf, f["saturation"])
    if f["hue"] is not None:
        xf = adjust_hue(xf, f["hue"])
    return _back(xf, was_uint8)


# --------------------------------------------------------------------------- geometry and channels


def resize(x: torch.Tensor, size: Union[int, tuple[int, int]], mode: str = "bilinear") -> torch.Tensor:
    """Resize to ``size`` (an int means size x size) with bilinear or bicubic
    interpolation and antialiasing when shrinking, as torchvision's tensor Resize
    with ``antialias=True``. uint8 in gives uint8 out (rounded); float stays float
    (bicubic may overshoot 0..1 slightly, as in torchvision)."""
    _check_batch(x)
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown resize mode {mode!r}; use 'bilinear' or 'bicubic'")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    was_uint8 = x.dtype == torch.uint8
    xf = x.float() if was_uint8 else x
    y = F.interpolate(xf, size=hw, mode=mode, align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8) if was_uint8 else y


def repeat_channels(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """A single-channel batch seen as ``channels`` identical channels (a view, no copy)."""
    _check_batch(x)
    if x.shape[1] == channels:
        return x
    if x.shape[1] != 1:
        raise ValueError(f"can only repeat a single-channel batch, got {x.shape[1]} channels")
    return x.expand(-1, channels, -1, -1)


# --------------------------------------------------------------------------- the per-batch pipeline


class Preprocess:
    """Turns a uint8 batch into the model's float32 input, on the batch's device.

    Training (``train=True``): random crop with padding, horizontal flip and colour
    jitter as set in ``data.augment``; then, for every split: resize to
    ``data.resize``, grey -> 3 channel repeat for ``data.channels=3``, and
    normalisation by the split's mean/std. Call as ``pre(x_uint8, generator)``;
    the generator is only needed when :attr:`random` is true.
    """

    def __init__(self, splits: Splits, data_cfg: Optional[DataConfig] = None, train: bool = False):
        aug = data_cfg.augment if data_cfg is not None else None
        self.train = train
        self.aug = aug
        self.resize = data_cfg.resize if data_cfg is not None else None
        self.resize_mode = data_cfg.resize_mode if data_cfg is not None else "bilinear"
        self.in_channels = splits.in_channels
        self.repeat = splits.train_x.shape[1] == 1 and splits.in_channels == 3
        h, w = splits.train_x.shape[-2:]
        self.crop = bool(train and aug is not None and aug.crop_padding > 0)
        self.flip = bool(train and aug is not None and aug.flip)
        self.alternate = self.flip and aug.flip_mode == "alternate"  # flips follow the epoch, see prepared()
        self.pre_pad = self.crop and aug.pre_pad  # batches arrive padded, see prepared()
        self.jitter = bool(train and aug is not None and any(v > 0 for v in (aug.brightness, aug.contrast,
                                                                              aug.saturation, aug.hue)))
        if self.crop and aug.crop_mode == "reflect" and aug.crop_padding >= min(h, w):
            from cnnlab.config.schema import ConfigError  # only on this error path; config imports no data code

            raise ConfigError(
                f"data.augment.crop_padding={aug.crop_padding} with crop_mode=reflect must be smaller than the "
                f"image ({h}x{w}); use a smaller padding or crop_mode=zero"
            )
        dev = splits.train_x.device
        if self.crop:  # the window's flat pixel indices at corner (0, 0), plain and mirrored, built once
            p = aug.crop_padding
            rows = torch.arange(h, device=dev).view(h, 1) * (w + 2 * p)
            self._window = (rows + torch.arange(w, device=dev)).view(1, 1, h * w)
            self._mirrored = (rows + torch.arange(w - 1, -1, -1, device=dev)).view(1, 1, h * w)
            self._corner = torch.tensor([[w + 2 * p], [1]], device=dev)  # (top, left) -> flat offset
        mean = torch.tensor(splits.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        std = torch.tensor(splits.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        # Without jitter the 1/255 is folded into the normalisation (one pass less).
        scale = 1.0 if self.jitter else 255.0
        self._mul = 1.0 / (std * scale)
        self._add = -mean / std

    @property
    def random(self) -> bool:
        """Whether the training input changes between epochs (a training crop, flip or jitter is on)."""
        return self.crop or self.flip or self.jitter

    def prepared(self, splits: Splits, seed: int) -> Splits:
        """The splits with the training images as the training batches are cut from: unchanged, or (same
        positions, same labels) a copy where ``data.augment.flip_mode=alternate`` has mirrored each image
        chosen by a coin drawn once from ``seed`` (its flip in epoch 0: :meth:`__call__` mirrors every
        image on odd epochs, so each one alternates) and ``data.augment.pre_pad`` has padded every image."""
        if not (self.alternate or self.pre_pad):
            return splits
        x = splits.train_x
        if not isinstance(x, torch.Tensor):
            raise ValueError("data.augment.flip_mode=alternate and pre_pad need the training images in memory "
                             "(this set is streamed from its cache file: raise data.max_memory or turn them off)")
        if self.alternate:
            coins = torch.Generator().manual_seed(seed * 1_000_003 + 7)  # its own stream: epochs use seed*k + e
            x = hflip_where(x, flip_mask(len(x), coins, 0.5, x.device))
        if self.pre_pad:
            x = pad(x, self.aug.crop_padding, self.aug.crop_mode)
        out = copy.copy(splits)  # a shallow copy: every other split and field is shared
        out.train_x = x
        return out

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, epoch: int = 0) -> torch.Tensor:
        """``x``: a uint8 batch (of :meth:`prepared`'s training images when training); ``epoch`` (from 0) sets
        the alternating flip."""
        if self.random and generator is None:
            raise ValueError("training augmentation is on: pass a torch.Generator for reproducible randomness")
        a = self.aug
        if self.crop:
            x = self._crop_and_flip(x, generator, epoch)
        elif self.alternate:
            x = x.flip(-1) if epoch % 2 else x
        elif self.flip:
            x = random_hflip(x, generator)
        if self.jitter or self.resize:  # else addcmul below takes the uint8 batch as it is (one pass less)
            x = x.float()
        if self.jitter:
            x = color_jitter(x.div_(255), generator, a.brightness, a.contrast, a.saturation, a.hue)
        if self.resize:
            x = resize(x, self.resize, self.resize_mode)
        if self.repeat:
            x = repeat_channels(x, 3)
        return torch.addcmul(self._add, x, self._mul)

    def _crop_and_flip(self, x: torch.Tensor, generator: Optional[torch.Generator], epoch: int = 0) -> torch.Tensor:
        """:func:`random_crop` then (if on) :func:`random_hflip` in one gather, from the same random draws
        in the same order: the flip only chooses the mirrored window, so the batch is read once and the
        step dispatches a dozen operators fewer (benchmarks/bench_step_ops.py). With ``pre_pad`` the batch
        arrives padded (the same crops); with the alternating flip every window is mirrored on odd epochs
        (mirroring a padded image and cropping at a uniform corner gives the same distribution as cropping
        then mirroring) and no flip is drawn."""
        p = self.aug.crop_padding
        padded = x if self.pre_pad else pad(x, p, self.aug.crop_mode)
        n, c, h, w = padded.shape[0], padded.shape[1], padded.shape[2] - 2 * p, padded.shape[3] - 2 * p
        gen_device = generator.device if generator is not None else torch.device("cpu")
        corners = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=gen_device)
        offset = (corners.to(x.device) * self._corner).sum(0).view(n, 1, 1)
        window = self._window
        if self.alternate:
            window = self._mirrored if epoch % 2 else window
        elif self.flip:
            window = torch.where(flip_mask(n, generator, 0.5, x.device).view(n, 1, 1), self._mirrored, window)
        index = (window + offset).expand(n, c, h * w)
        return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def no_preprocessing(x: torch.Tensor, generator=None, epoch: int = 0) -> torch.Tensor:
    """The preprocessing of inputs that are already features (a frozen backbone's cached outputs)."""
    return x


def preprocess_record(splits: Splits, data_cfg: Optional[DataConfig] = None, tta: str = "none") -> dict:
    """What a trained model needs to be used on new images, as plain values (saved in the
    checkpoints and summary.json): the class names, the input shape (C, H, W) and channels,
    the normalisation applied after scaling pixels to 0..1, and the resize policy."""
    c, h, w = splits.input_shape
    if hasattr(splits, "preprocessing"):  # the data layer's own record (resize policy, interpolation), when it has one
        return {**splits.preprocessing(), "stored_channels": int(splits.train_x.shape[1]), "tta": tta}
    return {
        "classes": list(splits.classes), "input_shape": [c, h, w], "channels": c,
        "stored_channels": int(splits.train_x.shape[1]), "mean": [float(m) for m in splits.mean],
        "std": [float(s) for s in splits.std], "scale": "x / 255, then (x - mean) / std per channel",
        "resize": getattr(data_cfg, "resize", None), "resize_mode": getattr(data_cfg, "resize_mode", "bilinear"),
        "tta": tta,
    }
