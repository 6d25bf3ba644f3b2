"""Image folders as people have them: ``root/<class>/...`` (flat; split into train /
validation / test by :mod:`cnnlab.data.splits`) or ``root/train/<class>/`` +
``root/test/<class>/`` (+ ``root/val/<class>/``), of JPEG, PNG, BMP, GIF, WebP or TIFF
images of any size and colour mode.

The tree is scanned (class folders may hold subfolders; hidden files and folders and
files that are not images are skipped and counted) and fingerprinted: every image's
path, size and mtime, plus the resize settings. Pillow then decodes the images in a
thread pool (it releases the GIL while decoding): EXIF orientation applied, grey
kept grey and everything else (palette, RGBA, CMYK...) made RGB, transparency over
black, and with ``data.resize`` each image is brought to that size by the
``data.resize_policy`` (stretch, crop or pad). :mod:`cnnlab.data.cache` keeps the
decoded uint8 tensors under the cache directory, never in the data root, so later
runs load in a fraction of a second and a changed folder is decoded again. Classes
are the sorted class-folder names; the CIFAR-10 image-folder export is read through
:func:`read_tree` too.
"""
from __future__ import annotations

import errno
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from cnnlab.data.cache import load_cached, save_cached
from cnnlab.data.check import IMAGE_SUFFIXES, count_tree
from cnnlab.data.common import DataError, DataSource, RawData, channel_stats, short
from cnnlab.registry import DATASETS, DatasetInfo

IMAGEFOLDER = DatasetInfo(name="imagefolder", title="image folder")  # everything else comes from the files
HOW = ("data.name=imagefolder needs data.root to hold one folder of images per class (root/<class>/...), "
       "or train/<class>/ and test/<class>/ (and optionally val/<class>/) folders")


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


@dataclass
class Tree:
    """A scanned image tree. ``layout`` is "flat" (``files["all"]``) or "split"
    (``files["train"|"val"|"test"]``); files are ``(path relative to folder, class index)``
    in a fixed order; ``skipped`` are the files that are not images."""

    folder: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    fingerprint: str
    kinds: set[str]
    layout: str = "split"
    skipped: list[str] = field(default_factory=list)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _walk_class(folder: Path, rel: str, skipped: list[str]) -> list[tuple[str, os.stat_result]]:
    """Every image under ``folder/rel`` (subfolders too, hidden ones not; symlinked folders are
    not followed, so a link loop cannot hang the scan), sorted; non-images go to ``skipped``."""
    found = []
    for dirpath, dirs, names in os.walk(folder / rel):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        sub = os.path.relpath(dirpath, folder)
        for name in names:
            path = os.path.join(sub, name)
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                skipped.append(path)
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError as e:  # a dangling symlink: name it
                raise DataError(f"{folder / path} cannot be read ({short(e, 120)}); replace or remove it.") from None
            found.append((path, st))
    return sorted(found, key=lambda e: e[0])


def scan_tree(folder: Path, what: str, decode: Decode = Decode()) -> Tree:
    """List the images of a flat or a train/test tree and fingerprint them (relative
    path, size, mtime of every image, and the decode settings), so any change shows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder. {HOW} ({what}).")
    if (folder / "train").is_dir():
        if not (folder / "test").is_dir():
            raise DataError(f"{folder} has a train/ folder but no test/ folder. {HOW}.")
        layout, splits = "split", [s for s in ("train", "val", "test") if (folder / s).is_dir()]
    else:
        layout, splits = "flat", [""]
    base = {s: folder / s if s else folder for s in splits}
    classes = _class_dirs(base["train" if layout == "split" else ""])
    where = base["train" if layout == "split" else ""]
    if not classes:
        raise DataError(f"{where} holds no class folders. {HOW}.")
    if len(classes) < 2:
        raise DataError(f"{where} holds one class folder only ({classes[0]}/): a classifier needs at least 2 "
                        f"classes. Add a folder of images for each other class.")
    index = {c: i for i, c in enumerate(classes)}
    h = hashlib.sha256(f"decode\t{decode.key()}\n".encode())
    files: dict[str, list[tuple[str, int]]] = {}
    kinds: set[str] = set()
    skipped: list[str] = [e.name for s in splits for e in os.scandir(base[s]) if not e.is_dir()]
    for s in splits:
        split_classes = _class_dirs(base[s])
        extra = [c for c in split_classes if c not in index]
        if extra:
            raise DataError(f"{base[s]} has class folders that train/ lacks: {', '.join(extra)}. Every class "
                            f"needs training images; add them to {base['train']} or remove those folders.")
        key = s or "all"
        files[key] = []
        for c in split_classes:
            entries = _walk_class(folder, os.path.join(s, c) if s else c, skipped)
            if not entries:
                raise DataError(f"{base[s] / c} holds no images (JPEG, PNG, BMP, GIF, WebP or TIFF): every class "
                                f"folder needs images. Add some or remove the folder.")
            for path, st in entries:
                h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
                files[key].append((path, index[c]))
                kinds.add(os.path.splitext(path)[1].lower().lstrip(".").replace("jpg", "jpeg").upper())
    return Tree(folder, classes, files, h.hexdigest(), kinds, layout, sorted(skipped))


# --------------------------------------------------------------------------- decoding


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


def decode_file(path: Union[str, Path], decode: Decode = Decode()) -> np.ndarray:
    """One image file as uint8 ``[H, W]`` (grey) or ``[H, W, 3]``; raises what Pillow raises."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: turn the pixels as a viewer shows them
            im = ImageOps.exif_transpose(im)
        im = _to_grey_or_rgb(im)
        if decode.size is not None:
            im = fit(im, decode)
        return np.asarray(im)


def _decode_chunk(paths: list[str], decode: Decode) -> list[Union[np.ndarray, str]]:
    out: list[Union[np.ndarray, str]] = []
    for p in paths:
        try:
            out.append(decode_file(p, decode))
        except Exception as e:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError...
            out.append(short(e, 160) or type(e).__name__)
    return out


def decode_all(paths: list[str], decode: Decode = Decode(), threads: Optional[int] = None,
               progress: Optional[bool] = None) -> list[Union[np.ndarray, str]]:
    """Decode files in a thread pool (Pillow releases the GIL while decoding), in order:
    each an array, or the error text for a file that cannot be decoded. A progress bar
    shows on a terminal."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    chunk = 256
    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and len(paths) > chunk:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="decoding images", leave=False)
    out: list[Union[np.ndarray, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done in pool.map(partial(_decode_chunk, decode=decode), parts):
            out += done
            if bar is not None:
                bar.update(len(done))
    if bar is not None:
        bar.close()
    return out


def _bad_image_error(folder: Path, path: str, why: str) -> DataError:
    return DataError(f"{folder / path} could not be decoded as an image ({why}); replace or remove it, or set "
                     f"data.skip_bad_images=true to skip unreadable images (they are listed in the run folder).")


def _stack(arrays: list[np.ndarray], paths: list[str], folder: Path) -> torch.Tensor:
    """One uint8 ``[N, C, H, W]``: C is 3 if any image is colour (grey ones are repeated), else 1."""
    first = arrays[0].shape[:2]
    for a, p in zip(arrays, paths):
        if a.shape[:2] != first:
            (h1, w1), (h2, w2) = first, a.shape[:2]
            raise DataError(
                f"the images in {folder} differ in size: {paths[0]} is {h1}x{w1} and {p} is {h2}x{w2} "
                f"(height x width). cnnlab keeps a data set as one uint8 tensor: set data.resize (e.g. "
                f"data.resize={min(h1, w1, h2, w2)} or [height, width]) and data.resize_policy (stretch, crop "
                f"or pad) to bring every image to one size when it is decoded.")
    channels = 3 if any(a.ndim == 3 for a in arrays) else 1
    out = torch.empty(len(arrays), channels, *first, dtype=torch.uint8)
    view = out.numpy()
    for i, a in enumerate(arrays):
        view[i] = a if a.ndim == 2 else a.transpose(2, 0, 1)  # grey broadcasts over the channels
    return out


def _decode_tree(tree: Tree, decode: Decode) -> dict[str, Any]:
    """The tree's images as uint8 tensors per split (in file order, bad images left out),
    labels, classes, the relative paths, the bad images ``[(path, why)]`` and the skipped
    non-image files; for a split layout also the training mean/std."""
    folder = tree.folder
    order = [(s, p, c) for s in tree.files for p, c in tree.files[s]]
    decoded = decode_all([str(folder / p) for _, p, _ in order], decode)
    bad = [(p, d) for (_, p, _), d in zip(order, decoded) if isinstance(d, str)]
    good = [(s, p, c, d) for (s, p, c), d in zip(order, decoded) if not isinstance(d, str)]
    del decoded
    if not good:
        raise _bad_image_error(folder, *bad[0])
    x = _stack([d for *_, d in good], [p for _, p, _, _ in good], folder)
    blob: dict[str, Any] = {"classes": tree.classes, "layout": tree.layout, "bad": bad, "skipped": tree.skipped,
                            "files": {}}
    for s in tree.files:
        keep = torch.tensor([i for i, g in enumerate(good) if g[0] == s], dtype=torch.int64)
        blob[f"{s}_x"] = x[keep] if len(keep) else x[:0]
        blob[f"{s}_y"] = torch.tensor([good[i][2] for i in keep.tolist()], dtype=torch.int64)
        blob["files"][s] = [good[i][1] for i in keep.tolist()]
    if "train" in tree.files:
        blob["mean"], blob["std"] = channel_stats(blob["train_x"])
    return blob


def read_tree(folder: Path, label: str, decode: Decode = Decode(), skip_bad: bool = False
              ) -> tuple[dict[str, Any], Tree, Optional[Path], bool]:
    """Decode (or load from the cache) an image tree: returns the tensors (memory-mapped from the
    cache file when there is one), the scan, the cache file (None if none could be written) and
    whether it came from the cache.
    An image that cannot be decoded raises a DataError naming it unless ``skip_bad``."""
    try:
        tree = scan_tree(folder, label, decode)
    except OSError as e:  # a symbolic link loop (ELOOP), an unreadable folder, a file that vanished
        where = e.filename or folder
        loop = " (a symbolic link that points back into itself)" if e.errno == errno.ELOOP else ""
        raise DataError(f"{label}: cannot read {where}: {e.strerror or e}{loop}; fix or remove it, "
                        f"or point data.root elsewhere") from None
    key = f"{label}-{hashlib.sha256(decode.key().encode()).hexdigest()[:8]}" if decode.size else label
    blob, path = load_cached(key, tree.folder, tree.fingerprint)
    hit = blob is not None
    if blob is None:
        blob = _decode_tree(tree, decode)
        path = save_cached(blob, key, tree.folder, tree.fingerprint)
        if path is not None:  # read back memory-mapped, as a later run reads it: the decoded copy is freed
            mapped = load_cached(key, tree.folder, tree.fingerprint)[0]
            blob, path = (mapped, path) if mapped is not None else (blob, None)  # None: unusable as a cache
    if blob["bad"] and not skip_bad:
        raise _bad_image_error(tree.folder, *blob["bad"][0])
    return blob, tree, path, hit


def kinds_text(kinds: set[str]) -> str:
    if kinds == {"JPEG"}:
        return "JPEG, lossy"
    return " and ".join(sorted(kinds)) if len(kinds) <= 2 else ", ".join(sorted(kinds))


def _skipped_text(skipped: list[str]) -> str:
    if not skipped:
        return ""
    names = sorted({os.path.basename(p) for p in skipped})
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"; {len(skipped)} file{'s' if len(skipped) != 1 else ''} that are not images skipped ({shown})"


def load_imagefolder(root: Path, download: bool = False, *, resize: Any = None, resize_policy: str = "stretch",
                     resize_mode: str = "bilinear", skip_bad_images: bool = False) -> RawData:
    """A flat ``root/<class>/...`` folder or a ``train/<class>/`` + ``test/<class>/`` (+ ``val/``)
    tree at ``root``. Classes are the sorted class-folder names; mean/std come from the
    training images (a flat folder's are computed after the split, by cnnlab.data.splits).
    With ``resize`` every image is brought to that size when decoded (``resize_policy``,
    interpolation ``resize_mode``); without it the images must share one size."""
    root = Path(root)
    blob, tree, cache_path, hit = read_tree(root, "imagefolder", Decode.of(resize, resize_policy, resize_mode),
                                            skip_bad=skip_bad_images)
    flat = blob["layout"] == "flat"
    n = sum(len(v) for v in blob["files"].values())
    bad = f"; {len(blob['bad'])} unreadable image(s) skipped" if blob["bad"] else ""
    source = (f"image folder ({'flat, ' if flat else ''}{n:,} {kinds_text(tree.kinds)} images) at {root}"
              f"{_skipped_text(blob['skipped'])}{bad}")
    x = blob["all_x" if flat else "train_x"]
    mean, std = (blob["mean"], blob["std"]) if not flat else ((0.0,) * x.shape[1], (1.0,) * x.shape[1])
    return RawData(
        x, blob["all_y" if flat else "train_y"],
        x[:0] if flat else blob["test_x"], blob["all_y"][:0] if flat else blob["test_y"],
        list(blob["classes"]), tuple(mean), tuple(std), source=source, cache_path=cache_path, from_cache=hit,
        mapped=cache_path is not None,
        val_x=blob.get("val_x"), val_y=blob.get("val_y"), layout=blob["layout"], root=root,
        files={("train" if flat else s): list(v) for s, v in blob["files"].items()},
        bad_images=[tuple(b) for b in blob["bad"]], skipped=list(blob["skipped"]),
    )


def describe_imagefolder(info: DatasetInfo, root: Path, check: bool) -> dict[str, Any]:
    root = Path(root)
    if root.is_dir():
        counts = count_tree(root)
        flat = "all" in counts
        ok = counts["all"] > 0 if flat else counts["train"] > 0 and counts["test"] > 0
        if ok or (root / "train").is_dir():
            message = (f"{counts['all']} images in class folders (split when loaded)" if flat else
                       f"{counts['train']} training and {counts['test']} test images")
            return {
                "name": info.name, "present": True, "ok": ok, "location": str(root), "source": "image folder",
                "files": [], "images": counts, "message": message,
            }  # fmt: skip
    return {
        "name": info.name, "present": False, "ok": False, "location": str(root), "source": None,
        "files": [], "message": "no <class>/ or train/<class>/ + test/<class>/ image folders (set data.root to one)",
    }  # fmt: skip


DATASETS.register("imagefolder")(DataSource(
    IMAGEFOLDER, load_imagefolder, partial(describe_imagefolder, IMAGEFOLDER),
    options=("resize", "resize_policy", "resize_mode", "skip_bad_images"),
))
