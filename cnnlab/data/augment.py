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
Strength = Union[float, tuple, list]  # a ColorJitter strength: a number v or the range [lo, hi] itself
JITTER = ("brightness", "contrast", "saturation", "hue")

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


def jitter_range(name: str, v: Strength) -> Optional[tuple[float, float]]:
    """The range one ColorJitter strength draws its factor from, as torchvision reads it: a number v gives
    [max(0, 1 - v), 1 + v] (hue: [-v, v]); a pair [lo, hi] is the range itself (brightness, contrast,
    saturation: 0 <= lo <= hi; hue: -0.5 <= lo <= hi <= 0.5). None when the operation is off (0, or the
    range [1, 1]; hue [0, 0])."""
    hue = name == "hue"
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be a number or a range [lo, hi], got {v}")
        lo, hi = float(v[0]), float(v[1])
    else:
        if v < 0 or (hue and v > 0.5):
            raise ValueError(f"{name} must be " + ("in [0, 0.5]" if hue else ">= 0") + f", got {v}")
        lo, hi = (-float(v), float(v)) if hue else (max(0.0, 1.0 - v), 1.0 + v)
    if not (-0.5 <= lo <= hi <= 0.5 if hue else 0 <= lo <= hi):
        raise ValueError(f"{name} range must have " + ("-0.5 <= lo <= hi <= 0.5" if hue else "0 <= lo <= hi")
                         + f", got [{lo}, {hi}]")
    return None if (lo, hi) == ((0.0, 0.0) if hue else (1.0, 1.0)) else (lo, hi)


def jitter_factors(
    n: int,
    generator: Optional[torch.Generator],
    brightness: Strength = 0.0,
    contrast: Strength = 0.0,
    saturation: Strength = 0.0,
    hue: Strength = 0.0,
    device: Optional[torch.device] = None,
) -> dict[str, Optional[torch.Tensor]]:
    """Per-image jitter factors with torchvision ColorJitter's ranges (:func:`jitter_range`): each
    factor uniform in its range. An operation that is off gives None (it is skipped and draws
    nothing). Draws happen in the order brightness, contrast, saturation, hue."""
    device = device or torch.device("cpu")
    out: dict[str, Optional[torch.Tensor]] = {}
    for name, v in zip(JITTER, (brightness, contrast, saturation, hue)):
        r = jitter_range(name, v)
        if r is None:
            out[name] = None
        elif name == "hue" and r[0] == -r[1]:  # the symmetric range of a number, drawn as it always was
            out[name] = (2.0 * _uniform(n, generator, device) - 1.0) * r[1]
        else:
            out[name] = r[0] + (r[1] - r[0]) * _uniform(n, generator, device)
    return out


def color_jitter(
    x: torch.Tensor,
    generator: Optional[torch.Generator],
    brightness: Strength = 0.0,
    contrast: Strength = 0.0,
    saturation: Strength = 0.0,
    hue: Strength = 0.0,
) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image (fixed order); each strength a number or
    a range [lo, hi], as torchvision's ColorJitter takes them."""
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


# --------------------------------------------------------------------------- affine (rotation, translation, scale, shear)


def _vector(v: Factor, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A scalar or an [N] tensor of per-image parameters as an [N] tensor."""
    t = v.to(device, dtype) if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=device, dtype=dtype)
    return t.expand(n) if t.dim() == 0 else t


AFFINE_KEYS = ("angle", "translate_x", "translate_y", "scale", "shear_x", "shear_y")


def affine_theta(n: int, size: tuple[int, int], params: dict, center=None, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """[N, 2, 3]: for each image, the inverse of torchvision's affine matrix (output pixel -> input pixel, in pixels
    from the image centre), the one ``torchvision.transforms.v2.functional.affine`` builds for one image.
    ``params``: :data:`AFFINE_KEYS` (as :func:`affine` takes them), each a float or an [N] tensor."""
    h, w = size
    p = [_vector(params[k], n, device or torch.device("cpu"), dtype) for k in AFFINE_KEYS]
    rot, tx, ty, s, sx, sy = p[0].deg2rad(), p[1], p[2], p[3], p[4].deg2rad(), p[5].deg2rad()
    cx, cy = (0.0, 0.0) if center is None else (center[0] - w * 0.5, center[1] - h * 0.5)
    # rotation x shear (torchvision's RSS without the scale, determinant 1), inverted, divided by the scale
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d / s, -b / s, -c / s, a / s
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([torch.stack([m0, m1, m2], 1), torch.stack([m3, m4, m5], 1)], 1)


def affine(x: torch.Tensor, angle: Factor, translate_x: Factor = 0.0, translate_y: Factor = 0.0,
           scale: Factor = 1.0, shear_x: Factor = 0.0, shear_y: Factor = 0.0, center=None,
           mode: str = "bilinear") -> torch.Tensor:
    """torchvision's ``affine`` with a different transform per image, in one ``grid_sample``: ``angle`` clockwise in
    degrees, translations in pixels, ``scale``, shears in degrees (each a float or an [N] tensor), about the image
    centre or ``center`` = (x, y) in pixels; outside the image is 0. uint8 in gives uint8 out (rounded)."""
    _check_batch(x)
    n, _, h, w = x.shape
    xf = x if x.is_floating_point() else x.float()
    values = (angle, translate_x, translate_y, scale, shear_x, shear_y)
    theta = affine_theta(n, (h, w), dict(zip(AFFINE_KEYS, values)), center, x.device, xf.dtype)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device, dtype=xf.dtype)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device, dtype=xf.dtype)
    base = torch.stack([xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.ones(h, w, device=x.device,
                                                                                 dtype=xf.dtype)], -1)
    half = torch.tensor([0.5 * w, 0.5 * h], device=x.device, dtype=xf.dtype)
    grid = base.view(1, h * w, 3).matmul(theta.transpose(1, 2) / half).view(n, h, w, 2)
    out = F.grid_sample(xf, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out if x.is_floating_point() else out.round_().clamp_(0, 255).to(x.dtype)


def affine_params(n: int, generator: Optional[torch.Generator], rotate: float = 0.0, translate: float = 0.0,
                  scale: float = 0.0, shear: float = 0.0, size: tuple[int, int] = (1, 1),
                  device: Optional[torch.device] = None) -> dict[str, torch.Tensor]:
    """Per-image parameters of :func:`random_affine`, five uniform draws per image (angle, x and y translation,
    scale, shear): angle in [-rotate, rotate] degrees, translation in [-translate, translate] x the image's
    width / height (in pixels, not rounded), scale in [1 - scale, 1 + scale], x-shear in [-shear, shear] degrees."""
    u = _uniform(5 * n, generator, device or torch.device("cpu")).view(5, n) * 2 - 1
    h, w = size
    return {"angle": u[0] * rotate, "translate_x": u[1] * translate * w, "translate_y": u[2] * translate * h,
            "scale": 1 + u[3] * scale, "shear_x": u[4] * shear}


def random_affine(x: torch.Tensor, generator: Optional[torch.Generator], rotate: float = 0.0,
                  translate: float = 0.0, scale: float = 0.0, shear: float = 0.0,
                  mode: str = "bilinear") -> torch.Tensor:
    """torchvision's ``RandomAffine(rotate, (translate, translate), (1 - scale, 1 + scale), shear)`` drawn for
    every image (torchvision's draws once per call), bilinear, zeros outside; translations are not rounded."""
    _check_batch(x)
    p = affine_params(x.shape[0], generator, rotate, translate, scale, shear, tuple(x.shape[-2:]), x.device)
    return affine(x, mode=mode, **p)


# --------------------------------------------------------------------------- TrivialAugment / RandAugment


def adjust_sharpness(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend each image with its smoothed version (torchvision's 3x3 kernel, border pixels kept): 0 gives the
    smoothed image, 1 the original, 2 a sharpened one."""
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return x
    xf, was_uint8 = _as_unit_float(x)
    c = xf.shape[1]
    kernel = torch.ones(3, 3, device=xf.device, dtype=xf.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    degenerate = xf.clone()
    degenerate[..., 1:-1, 1:-1] = F.conv2d(xf, kernel, groups=c)
    return _back(_blend(xf, degenerate, _per_sample(factor, xf)), was_uint8)


def posterize(x: torch.Tensor, bits: Factor) -> torch.Tensor:
    """Keep the ``bits`` (per image, 1..8) highest bits of each uint8 pixel."""
    b = bits.to(x.device).long().view(-1, 1, 1, 1) if isinstance(bits, torch.Tensor) and bits.dim() else \
        torch.tensor(int(bits), device=x.device)
    return x & ((255 << (8 - b)) & 255).to(torch.uint8)


def solarize(x: torch.Tensor, threshold: Factor) -> torch.Tensor:
    """Invert every uint8 pixel at or above ``threshold`` (per image, 0..255)."""
    return torch.where(x >= _per_sample(threshold, x.float()), 255 - x, x)


AUTO_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
            "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
SIGNED_OPS = frozenset(AUTO_OPS[1:10])  # their magnitude takes a random sign
AUTO_BINS = 31  # torchvision's num_magnitude_bins


def auto_magnitudes(policy: str, op: str, bins: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The unsigned magnitude of ``op`` at magnitude bin ``bins`` (0..30, per image): torchvision's
    TrivialAugmentWide (``policy='trivial'``) or RandAugment (``'randaugment'``) augmentation space."""
    t = bins.float() / (AUTO_BINS - 1)
    wide = policy == "trivial"
    if op in ("shear_x", "shear_y"):
        return t * (0.99 if wide else 0.3)
    if op in ("translate_x", "translate_y"):
        return t * (32.0 if wide else 150.0 / 331.0 * (width if op == "translate_x" else height))
    if op == "rotate":
        return t * (135.0 if wide else 30.0)
    if op in ("brightness", "color", "contrast", "sharpness"):
        return t * (0.99 if wide else 0.9)
    if op == "posterize":
        return 8 - (bins.float() / ((AUTO_BINS - 1) / (6 if wide else 4))).round()
    if op == "solarize":
        return (1 - t) * 255.0
    return torch.zeros_like(t)


def auto_op(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    """One augmentation op of the TrivialAugment / RandAugment space on a uint8 batch, with signed magnitude ``m``
    per image, as torchvision's ``_apply_image_or_video_transform`` applies it to one image (nearest
    interpolation, zeros outside; shears about the top-left corner, translations truncated to whole pixels)."""
    from torchvision.transforms.v2 import functional as TV

    if op in ("shear_x", "shear_y"):
        shear = m.atan().rad2deg()
        return affine(x, 0.0, shear_x=shear if op == "shear_x" else 0.0, shear_y=shear if op == "shear_y" else 0.0,
                      center=(0.0, 0.0), mode="nearest")
    if op in ("translate_x", "translate_y"):
        shift = m.trunc()
        return affine(x, 0.0, translate_x=shift if op == "translate_x" else 0.0,
                      translate_y=shift if op == "translate_y" else 0.0, mode="nearest")
    if op == "rotate":  # torchvision's rotate turns counter-clockwise: affine's angle is clockwise
        return affine(x, -m, mode="nearest")
    adjust = {"brightness": adjust_brightness, "color": adjust_saturation, "contrast": adjust_contrast,
              "sharpness": adjust_sharpness}
    if op in adjust:
        return adjust[op](x, 1.0 + m)
    if op == "posterize":
        return posterize(x, m)
    if op == "solarize":
        return solarize(x, m)
    if op == "autocontrast":  # torchvision's tensor kernels work per image over a batch: no random parameter
        return TV.autocontrast(x)
    if op == "equalize":
        return TV.equalize(x)
    return x


def _randint(high: int, n: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, (n,), generator=generator, device=gen_device).to(device)


def auto_augment(x: torch.Tensor, generator: Optional[torch.Generator], policy: str = "trivial",
                 num_ops: int = 2, magnitude: int = 9) -> torch.Tensor:
    """TrivialAugmentWide (``policy='trivial'``: one op per image at a uniform magnitude bin) or RandAugment
    (``'randaugment'``: ``num_ops`` ops per image, each at bin ``magnitude``) on a uint8 batch, every image
    drawing its own ops, bins and signs. The batch is split by op (one call per op, not per image)."""
    _check_batch(x)
    if x.dtype != torch.uint8:
        raise TypeError(f"auto_augment takes a uint8 batch, got {x.dtype}")
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    for _ in range(1 if policy == "trivial" else num_ops):
        ops = _randint(len(AUTO_OPS), n, generator, x.device)
        bins = _randint(AUTO_BINS, n, generator, x.device) if policy == "trivial" else \
            torch.full((n,), magnitude, device=x.device)
        signs = torch.where(_uniform(n, generator, x.device) < 0.5, -1.0, 1.0)
        out = x.clone()
        # the images of each op, in index order: one sort and one host read of the counts for the whole batch
        order, counts = torch.argsort(ops, stable=True), torch.bincount(ops, minlength=len(AUTO_OPS)).tolist()
        starts = [sum(counts[:k]) for k in range(len(AUTO_OPS))]
        for k, op in enumerate(AUTO_OPS[1:], start=1):
            if counts[k] == 0:
                continue
            idx = order[starts[k]:starts[k] + counts[k]]
            m = auto_magnitudes(policy, op, bins[idx], h, w) * (signs[idx] if op in SIGNED_OPS else 1.0)
            out.index_copy_(0, idx, auto_op(x.index_select(0, idx), op, m))
        x = out
    return x


# --------------------------------------------------------------------------- mixup and cutmix


def beta_quantiles(alpha: float, points: int = 4097, device=None) -> torch.Tensor:
    """Beta(alpha, alpha)'s quantile function at ``points`` evenly spaced probabilities (scipy's betaincinv), so
    that a draw is a uniform number looked up in it, on the device, from the run's own generator."""
    from scipy.special import betaincinv

    u = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    return torch.from_numpy(betaincinv(alpha, alpha, u.numpy())).float().to(device)


def _quantile(table: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``table`` (evenly spaced in probability) at probabilities ``u``, interpolated linearly."""
    pos = u * (len(table) - 1)
    i = pos.floor().long().clamp_(0, len(table) - 2)
    return torch.lerp(table[i], table[i + 1], (pos - i).clamp_(0, 1))


def cutmix_boxes(lam: torch.Tensor, u_y: torch.Tensor, u_x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[N, 4] (top, bottom, left, right) boxes: side ``sqrt(1 - lam)`` of the image's, centred at a uniform pixel
    (``u_y``, ``u_x`` in [0, 1)) and cut by the image's edges, as timm's ``rand_bbox``."""
    r = (1 - lam).clamp(0, 1).sqrt()
    ch, cw = (h * r).long(), (w * r).long()
    cy, cx = (u_y * h).long(), (u_x * w).long()
    top, bottom = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    left, right = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    return torch.stack([top, bottom, left, right], 1)


def mix(x: torch.Tensor, y: torch.Tensor, num_classes: int, lam: torch.Tensor, cut: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each image with its neighbour in the batch (``x.roll(1, 0)``): where ``cut``, the neighbour's pixels in
    ``boxes`` (cutmix), else ``lam`` x image + (1 - lam) x neighbour (mixup; ``cut`` None: mixup for all). Returns
    the batch, the soft targets (own class's share = the own image's share: ``lam``, or 1 - box area / image
    area) and those shares."""
    n, _, h, w = x.shape
    partner = x.roll(1, 0)
    share = lam
    weight = lam if cut is None else torch.where(cut, 1.0, lam)  # cutmix images are not blended
    mixed = torch.lerp(partner, x, weight.view(n, 1, 1, 1).to(x.dtype))  # exact at weights 0 and 1
    if cut is not None:
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        b = boxes.to(x.device).view(n, 4, 1, 1)
        inside = (rows >= b[:, 0]) & (rows < b[:, 1]) & (cols >= b[:, 2]) & (cols < b[:, 3])  # [N, H, W]
        mixed = torch.where((inside & cut.view(n, 1, 1)).unsqueeze(1), partner, mixed)
        area = ((b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])).view(n).float()
        share = torch.where(cut, 1 - area / (h * w), lam)
    one_hot = F.one_hot(y.long(), num_classes).float()
    targets = share.view(n, 1) * one_hot + (1 - share.view(n, 1)) * one_hot.roll(1, 0)
    return mixed, targets, share


class Mixer:
    """``data.augment.mixup`` / ``cutmix`` (Beta parameters; 0 = off): every image of a batch is mixed with its
    neighbour, each drawing its own lam from Beta(alpha, alpha), and, with both on, cutmix or mixup with p 0.5.
    Four uniform draws per image (lam, the choice, the box centre) from the run's augmentation generator."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int, device=None):
        self.num_classes = num_classes
        self.mixup = beta_quantiles(mixup, device=device) if mixup > 0 else None
        self.cutmix = beta_quantiles(cutmix, device=device) if cutmix > 0 else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]):
        """``(mixed batch, soft targets [N, classes])``."""
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        u = _uniform(4 * n, generator, x.device).view(4, n)
        if self.cutmix is None:  # mixup only: no boxes
            return mix(x, y, self.num_classes, _quantile(self.mixup, u[0]))[:2]
        if self.mixup is not None:
            cut = u[1] < 0.5
            lam = torch.where(cut, _quantile(self.cutmix, u[0]), _quantile(self.mixup, u[0]))
        else:
            cut, lam = torch.ones(n, dtype=torch.bool, device=x.device), _quantile(self.cutmix, u[0])
        mixed, targets, _ = mix(x, y, self.num_classes, lam, cut, cutmix_boxes(lam, u[2], u[3], h, w))
        return mixed, targets


# --------------------------------------------------------------------------- the per-batch pipeline


class Preprocess:
    """Turns a uint8 batch into the model's float32 input, on the batch's device.

    Training (``train=True``): random crop with padding, horizontal flip, TrivialAugment / RandAugment
    (``data.augment.auto``), a random affine (rotate, translate, scale, shear) and colour
    jitter as set in ``data.augment``; then, for every split: resize to
    ``data.resize``, grey -> 3 channel repeat for ``data.channels=3``, and
    normalisation by the split's mean/std. Call as ``pre(x_uint8, generator)``;
    the generator is only needed when :attr:`random` is true. Mixup / cutmix change the labels too:
    :attr:`mixer` (None when off) takes the normalised batch and its labels.
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
        self.jitter = bool(train and aug is not None and any(jitter_range(k, getattr(aug, k)) for k in JITTER))
        self.affine = bool(train and aug is not None and any(v > 0 for v in (aug.rotate, aug.translate, aug.scale,
                                                                             aug.shear)))
        self.auto = bool(train and aug is not None and aug.auto != "none")
        self.mixer = Mixer(aug.mixup, aug.cutmix, splits.num_classes, splits.train_x.device) \
            if train and aug is not None and (aug.mixup > 0 or aug.cutmix > 0) else None
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
        """Whether the training input changes between epochs (a training augmentation is on)."""
        return self.crop or self.flip or self.jitter or self.affine or self.auto or self.mixer is not None

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
        if self.auto:
            x = auto_augment(x, generator, a.auto, a.auto_ops, a.auto_magnitude)
        if self.jitter or self.resize or self.affine:  # else addcmul below takes the uint8 batch as it is
            x = x.float()
        if self.affine:  # on the 0..255 scale, zeros outside
            x = random_affine(x, generator, a.rotate, a.translate, a.scale, a.shear)
        if self.jitter:
            x = color_jitter(x.div_(255), generator, a.brightness, a.contrast, a.saturation, a.hue)
        if self.resize:
            x = resize(x, self.resize, self.resize_mode)
            if self.resize_mode == "bicubic":  # its overshoot kept to the pixel range, as a decoded image's is
                x = x.clamp_(0.0, 1.0 if self.jitter else 255.0)
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
