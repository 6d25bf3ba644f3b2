"""THE decoding of an image file, for training and for predict alike.

The image-folder loader (:mod:`cnnlab.data.sources.imagefolder`, whose results
:mod:`cnnlab.data.cache` keeps) decodes every training image with :func:`decode_file`;
predict, ``cnnlab predict`` and ``cnnlab.load(...).predict`` decode new images with
:func:`decode_as_trained`, which reads the run's saved preprocessing record and calls the
same Pillow code with the same :class:`Decode` settings, so a served model sees exactly the
uint8 pixels its training saw. What it does: EXIF orientation applied, grey kept grey and
every other mode (palette, RGBA, CMYK, 16-bit...) made RGB or grey, transparency
composited over black, 16-bit grey by its high byte; then with a size the image is brought
to it by the resize policy (stretch, crop or pad) with the interpolation (bilinear or
bicubic). Sets that are resized on the batch instead (MNIST, CIFAR-10 with ``data.resize``)
are matched too: the image is decoded at its own size and resized by
:func:`cnnlab.data.augment.resize`, as their training batches are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from cnnlab.data.common import open_regular, short, to_grey

POLICIES = ("stretch", "crop", "pad")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Decode:
    """What changes the decoded pixels (so it is part of the cache key): the target size
    (height, width) or None, the resize policy and the interpolation."""

    size: Optional[tuple[int, int]] = None
    policy: str = "stretch"
    interpolation: str = "bilinear"

    @classmethod
    def of(cls, resize: Any = None, policy: str = "stretch", interpolation: str = "bilinear") -> "Decode":
        if resize is None:
            return cls(None, policy, interpolation)
        h, w = (resize, resize) if isinstance(resize, int) else tuple(resize)
        return cls((int(h), int(w)), policy, interpolation)

    def key(self) -> str:
        return "" if self.size is None else f"{self.size[0]}x{self.size[1]}-{self.policy}-{self.interpolation}"

    @classmethod
    def of_record(cls, record: dict) -> "Decode":
        """How predict decodes for a run, from its preprocessing record (:func:`Splits.preprocessing`):
        to the run's input size when training resized on decode (image folders) or had no resize (an
        image of another size must still fit the network); at the image's own size when training
        resized the batch (then :func:`decode_as_trained` resizes the tensor as the batch was). Older
        records kept the policy or the interpolation in ``resize_mode``."""
        _, h, w = record["input_shape"]
        legacy = record.get("resize_mode")
        policy = record.get("resize_policy") or (legacy if legacy in POLICIES else "stretch")
        interpolation = record.get("interpolation") or (legacy if legacy in INTERPOLATIONS else "bilinear")
        on_batch = bool(record.get("resize")) and record.get("resized_on_decode") is False
        return cls(None if on_batch else (int(h), int(w)), policy, interpolation)


def _resample(name: str):
    from PIL import Image

    return Image.Resampling.BICUBIC if name == "bicubic" else Image.Resampling.BILINEAR


def _to_grey_or_rgb(im):
    """A Pillow image as mode "L" (grey modes) or "RGB" (all others); transparency is
    composited over black, 16-bit grey keeps its high byte."""
    from PIL import Image

    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    if mode == "F":
        return Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8))
    if mode == "1":
        return im.convert("L")
    alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    if alpha:
        grey = mode in ("LA", "La")
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        out = Image.alpha_composite(black, rgba).convert("RGB")
        return out.convert("L") if grey else out
    return im.convert("RGB")


def fit(im, decode: Decode):
    """Bring a Pillow image to ``decode.size`` (height, width) by the policy: ``stretch``
    (aspect not kept), ``crop`` (shorter side to size, centre crop) or ``pad`` (longer
    side to size, centred, black bars)."""
    from PIL import ImageOps

    h, w = decode.size
    if im.size == (w, h):
        return im
    method = _resample(decode.interpolation)
    if decode.policy == "crop":
        return ImageOps.fit(im, (w, h), method=method)
    if decode.policy == "pad":
        return ImageOps.pad(im, (w, h), method=method, color=0)
    return im.resize((w, h), method)


class UnreadableImage(ValueError):
    """A file (or image) that cannot be decoded: not an image, truncated, a decompression bomb, a named
    pipe... The message says why, in one line."""


def decode_file(path: Union[str, Path], decode: Decode = Decode()) -> np.ndarray:
    """One image file as uint8 ``[H, W]`` (grey) or ``[H, W, 3]``; raises what Pillow raises, and
    NotRegularFile (an OSError) for a named pipe, socket or device, which is never opened."""
    from PIL import Image

    with open_regular(path) as f, Image.open(f) as im:
        return _pixels(im, decode)


def _pixels(im, decode: Decode) -> np.ndarray:
    from PIL import ImageOps

    if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: turn the pixels as a viewer shows them
        im = ImageOps.exif_transpose(im)
    im = _to_grey_or_rgb(im)
    if decode.size is not None:
        im = fit(im, decode)
    return np.asarray(im)


def decode_image(source: Any, decode: Decode = Decode(), channels: Optional[int] = None) -> torch.Tensor:
    """THE decoding of one image, for training and for predict alike: a path or a PIL image as uint8
    ``[C, H, W]``, decoded as :func:`decode_file` decodes a training image (EXIF orientation, 16-bit
    grey by its high byte, alpha over black, fitted to ``decode.size``), then brought to ``channels``
    as ``data.channels`` does (grey repeated; RGB to grey by :func:`~cnnlab.data.common.to_grey`).
    Anything that is no readable image raises :class:`UnreadableImage` (a ValueError) saying why."""
    from PIL import Image

    try:
        if isinstance(source, (str, Path)):
            a = decode_file(source, decode)
        elif isinstance(source, Image.Image):
            a = _pixels(source, decode)
        else:
            raise TypeError(f"expected a path or a PIL image, got {type(source).__name__}")
    except (KeyboardInterrupt, SystemExit, MemoryError, TypeError):
        raise
    except Exception as e:  # UnidentifiedImageError, OSError (truncated, a pipe), DecompressionBombError...
        raise UnreadableImage(short(e, 200) or type(e).__name__) from None
    x = torch.from_numpy((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).copy())
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1).contiguous()
    elif channels == 1 and x.shape[0] == 3:
        x = to_grey(x[None])[0]
    return x


def decode_as_trained(source: Any, record: dict) -> torch.Tensor:
    """A path or PIL image as the uint8 ``[C, H, W]`` a run's training would have made of it: decoded
    by :func:`decode_image` with the run's :meth:`Decode.of_record` settings, in the run's channels and
    at its input size (a batch-resized set's image resized as its batches were)."""
    from cnnlab.data.augment import resize  # the batch resize of sets not resized on decode

    c, h, w = (int(v) for v in record["input_shape"])
    decode = Decode.of_record(record)
    x = decode_image(source, decode, c)
    if decode.size is None and tuple(x.shape[-2:]) != (h, w):
        x = resize(x[None], (h, w), decode.interpolation)[0]
    return x
