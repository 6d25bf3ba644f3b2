"""Image folders: any ``train/<class>/`` + ``test/<class>/`` tree of PNG or JPEG images.

The tree is scanned and fingerprinted (every image's path, size and mtime), then
decoded once into whole-set uint8 tensors, which :mod:`cnnlab.data.cache` keeps
under the cache directory: later runs load in a fraction of a second and a
changed folder is decoded again. Classes are the sorted folder names of
``train/``; mean/std come from the training images. The CIFAR-10 image-folder
export is read through :func:`read_tree` too.
"""
from __future__ import annotations

import errno
import hashlib
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import torch

from cnnlab.data.cache import load_cached, save_cached
from cnnlab.data.check import IMAGE_SUFFIXES, count_tree
from cnnlab.data.common import DataError, DataSource, RawData, channel_stats, short
from cnnlab.registry import DATASETS, DatasetInfo

IMAGEFOLDER = DatasetInfo(name="imagefolder", title="image folder")  # everything else comes from the files


@dataclass
class Tree:
    """A scanned image tree: classes, ``files[split] = [(path, class index)]``, its
    fingerprint and which image kinds ("PNG", "JPEG") it holds."""

    folder: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    fingerprint: str
    kinds: set[str]


def scan_tree(folder: Path, what: str) -> Tree:
    """List ``train/<class>/*`` and ``test/<class>/*`` images and fingerprint them
    (relative path, size, mtime of every image), so any change shows."""
    how = (
        f"{what} needs a folder holding train/<class>/ and test/<class>/ with PNG or JPEG images "
        f"(data.root points at it)."
    )
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            raise DataError(f"{folder} has no {split}/ folder. {how}")
    # Hidden folders (.ipynb_checkpoints, caches) are not classes.
    classes = sorted(e.name for e in os.scandir(folder / "train") if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{folder / 'train'} holds no class folders. {how}")
    test_classes = sorted(e.name for e in os.scandir(folder / "test") if e.is_dir() and not e.name.startswith("."))
    extra = [c for c in test_classes if c not in classes]
    if extra:
        raise DataError(
            f"{folder / 'test'} has class folders that train/ lacks: {', '.join(extra)}. Every test class needs "
            f"training images; add them to {folder / 'train'} or remove those folders."
        )
    index = {c: i for i, c in enumerate(classes)}
    h = hashlib.sha256()
    files: dict[str, list[tuple[str, int]]] = {}
    kinds: set[str] = set()
    for split, split_classes in (("train", classes), ("test", test_classes)):
        files[split] = []
        for c in split_classes:
            # Plain strings here: 60,000 Path objects would cost more than the stat calls.
            entries = sorted(
                (e for e in os.scandir(folder / split / c) if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()),
                key=lambda e: e.name,
            )
            if split == "train" and not entries:
                raise DataError(f"{folder / split / c} holds no PNG or JPEG images; every class needs training images.")
            for e in entries:
                st = e.stat()
                h.update(f"{split}/{c}/{e.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
                files[split].append((e.path, index[c]))
                kinds.add("PNG" if e.name.lower().endswith(".png") else "JPEG")
    if not files["test"]:
        raise DataError(f"{folder / 'test'} holds no PNG or JPEG images. {how}")
    return Tree(folder, classes, files, h.hexdigest(), kinds)


# --------------------------------------------------------------------------- decoding


def _image_error(path: Union[str, Path], e: BaseException) -> DataError:
    return DataError(f"{path} could not be decoded as a PNG or JPEG image ({short(e, 160)}); replace or remove it.")


def _normalise_channels(img: torch.Tensor) -> torch.Tensor:
    """uint8 [C,H,W] with C 1 (grey) or 3 (colour): alpha dropped, 16-bit cut to 8."""
    if img.dtype != torch.uint8:  # 16-bit PNG: keep the high byte
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    if img.shape[0] == 2:  # grey + alpha
        img = img[:1]
    elif img.shape[0] == 4:  # RGBA
        img = img[:3]
    return img


def _decode_one(path: Union[str, Path], raw: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    # Palette PNGs (colour type 3 at byte 25) decode to their indices in UNCHANGED mode; ask for RGB.
    palette = len(raw) > 25 and raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[25] == 3
    try:
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        img = decode_image(data, mode=ImageReadMode.RGB if palette else ImageReadMode.UNCHANGED)
    except Exception as e:  # torchvision raises RuntimeError for bad data
        raise _image_error(path, e) from None
    return _normalise_channels(img)


def decode_all(paths: list[str]) -> list[torch.Tensor]:
    """Decode image files in order. JPEGs go through torchvision's list form of
    decode_jpeg, which is about twice as fast per image as one call each for
    small images. Threads were measured slower than this on 2 cores, so none are used."""
    with warnings.catch_warnings():
        # torchvision 0.29 announces that its decoders move to torchcodec; they still work
        # (and match Pillow pixel for pixel here), so one warning per image is only noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        return _decode_files(paths)


def _decode_files(paths: list[str]) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[Optional[torch.Tensor]] = [None] * len(paths)
    jpeg: dict[int, bytes] = {}
    for i, p in enumerate(paths):
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise _image_error(p, e) from None
        if raw[:3] == b"\xff\xd8\xff":  # JPEG start-of-image marker
            jpeg[i] = raw
        else:
            out[i] = _decode_one(p, raw)
    order = list(jpeg)
    for start in range(0, len(order), 4096):
        part = order[start : start + 4096]
        try:
            data = [torch.frombuffer(bytearray(jpeg[i]), dtype=torch.uint8) for i in part]
            imgs = decode_jpeg(data, mode=ImageReadMode.UNCHANGED)
        except Exception:  # one bad file fails the whole list: find it one by one
            imgs = [_decode_one(paths[i], jpeg[i]) for i in part]
        for i, img in zip(part, imgs):
            out[i] = _normalise_channels(img)
    return out  # type: ignore[return-value]


def _stack(images: list[torch.Tensor], paths: list[str], folder: Path, channels: int) -> torch.Tensor:
    if not images:
        return torch.empty(0, channels, 0, 0, dtype=torch.uint8)
    sizes: dict[tuple[int, int], str] = {}
    for img, p in zip(images, paths):
        sizes.setdefault(tuple(img.shape[-2:]), p)
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w} (e.g. {Path(p).relative_to(folder)})" for (h, w), p in list(sizes.items())[:4])
        raise DataError(
            f"the images in {folder} do not all have one size: {shown}. cnnlab keeps a data set as one uint8 "
            f"tensor, so resize them to a common size first (data.resize then scales on the device)."
        )
    return torch.stack([img.expand(channels, -1, -1) for img in images])


def _decode_tree(tree: Tree) -> dict[str, Any]:
    """The tree's images as uint8 tensors, labels, classes and training mean/std."""
    folder = tree.folder
    decoded = {s: decode_all([p for p, _ in tree.files[s]]) for s in ("train", "test")}
    channels = max(img.shape[0] for s in decoded for img in decoded[s])  # any colour image makes it RGB
    blob: dict[str, Any] = {"classes": tree.classes}
    for s in ("train", "test"):
        blob[f"{s}_x"] = _stack(decoded[s], [p for p, _ in tree.files[s]], folder, channels)
        blob[f"{s}_y"] = torch.tensor([c for _, c in tree.files[s]], dtype=torch.int64)
    del decoded
    tr, te = blob["train_x"].shape[-2:], blob["test_x"].shape[-2:]
    if len(blob["test_x"]) and tr != te:
        raise DataError(
            f"the images in {folder} do not all have one size: {tr[0]}x{tr[1]} in train/ but {te[0]}x{te[1]} in "
            f"test/. cnnlab keeps a data set as one uint8 tensor, so resize them to a common size first."
        )
    blob["mean"], blob["std"] = channel_stats(blob["train_x"])
    return blob


def read_tree(folder: Path, label: str) -> tuple[dict[str, Any], Tree, Optional[Path], bool]:
    """Decode (or load from the cache) an image tree: returns the tensors, the scan,
    the cache file (None if none could be written) and whether it came from the cache."""
    try:
        tree = scan_tree(folder, label)
    except OSError as e:  # a symbolic link loop (ELOOP), an unreadable folder, a file that vanished
        where = e.filename or folder
        loop = " (a symbolic link that points back into itself)" if e.errno == errno.ELOOP else ""
        raise DataError(f"{label}: cannot read {where}: {e.strerror or e}{loop}; fix or remove it, "
                        f"or point data.root elsewhere") from None
    blob, path = load_cached(label, folder, tree.fingerprint)
    if blob is not None:
        return blob, tree, path, True
    blob = _decode_tree(tree)
    return blob, tree, save_cached(blob, label, folder, tree.fingerprint), False


def kinds_text(kinds: set[str]) -> str:
    return "JPEG, lossy" if kinds == {"JPEG"} else ("PNG" if kinds == {"PNG"} else "PNG and JPEG")


def load_imagefolder(root: Path, download: bool = False, allow_modified: bool = False) -> RawData:
    """Any ``train/<class>/*`` + ``test/<class>/*`` tree of PNG/JPEG images at ``root``.
    Classes are the sorted folder names of train/; mean/std come from the training images."""
    root = Path(root)
    blob, tree, cache_path, hit = read_tree(root, "imagefolder")
    return RawData(
        blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], list(blob["classes"]),
        tuple(blob["mean"]), tuple(blob["std"]), source=f"image folder ({kinds_text(tree.kinds)}) at {root}",
        cache_path=cache_path, from_cache=hit,
    )  # fmt: skip


def describe_imagefolder(info: DatasetInfo, root: Path, check: bool) -> dict[str, Any]:
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        counts = count_tree(root)
        return {
            "name": info.name, "present": True, "ok": counts["train"] > 0 and counts["test"] > 0,
            "location": str(root), "source": "image folder", "files": [], "images": counts,
            "message": f"{counts['train']} training and {counts['test']} test images",
        }  # fmt: skip
    return {
        "name": info.name, "present": False, "ok": False, "location": str(root), "source": None,
        "files": [], "message": "not a train/<class>/ + test/<class>/ tree (set data.root to one to use it)",
    }  # fmt: skip


DATASETS.register("imagefolder")(DataSource(IMAGEFOLDER, load_imagefolder, partial(describe_imagefolder, IMAGEFOLDER)))
