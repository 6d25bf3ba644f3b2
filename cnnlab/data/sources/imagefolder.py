"""Image folders as people have them: ``root/<class>/...`` (flat; split into train /
validation / test by :mod:`cnnlab.data.splits`) or ``root/train/<class>/`` +
``root/test/<class>/`` (+ ``root/val/<class>/``), of JPEG, PNG, BMP, GIF, WebP or TIFF
images of any size and colour mode.

The tree is scanned (class folders may hold subfolders; hidden files and folders and
files that are not images are skipped and counted) and fingerprinted: every image's
path, size and mtime, plus the resize settings. Pillow then decodes the images in a
thread pool (it releases the GIL while decoding), each by :func:`cnnlab.data.decode.decode_file`,
the one decoding predict uses too: EXIF orientation applied, grey
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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from cnnlab.data.cache import load_cached, save_cached
from cnnlab.data.check import IMAGE_SUFFIXES, count_tree
from cnnlab.data.common import (DataError, DataSource, RawData, channel_stats, is_utf8, open_regular, short,
                                shown_name, special_kind)
from cnnlab.data.decode import Decode, decode_file
from cnnlab.outputs import is_cnnlab_output
from cnnlab.registry import DATASETS, DatasetInfo

IMAGEFOLDER = DatasetInfo(name="imagefolder", title="image folder")  # everything else comes from the files
HOW = ("data.name=imagefolder needs data.root to hold one folder of images per class (root/<class>/...), "
       "or train/<class>/ and test/<class>/ (and optionally val/<class>/) folders")


@dataclass
class Tree:
    """A scanned image tree. ``layout`` is "flat" (``files["all"]``) or "split"
    (``files["train"|"val"|"test"]``); files are ``(path relative to folder, class index)``
    in a fixed order; ``skipped`` are the files that are not images (special files such as
    named pipes included: only regular files are read); ``passed`` the folders left out, by why
    (:data:`PASSED`): hidden ones, links back into the tree, unreadable ones, cnnlab's own outputs."""

    folder: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    fingerprint: str
    kinds: set[str]
    layout: str = "split"
    skipped: list[str] = field(default_factory=list)
    passed: dict[str, list[str]] = field(default_factory=dict)


# why a folder was left out of the scan, as the data: line says it (singular, plural)
PASSED = {
    "hidden": ("hidden folder", "hidden folders"),
    "link": ("link to a folder already read (a loop)", "links to folders already read (loops)"),
    "unreadable": ("unreadable folder", "unreadable folders"),
    "output": ("cnnlab run or sweep folder", "cnnlab run or sweep folders"),
}


class _Scan:
    """What one scan collects besides the images: skipped files, folders passed by, the tree's real path."""

    def __init__(self, folder: Path, verify: str = "stat"):
        self.folder, self.verify = folder, verify
        self.real = os.path.realpath(folder)
        self._class_top: Optional[str] = None
        self.skipped: list[str] = []
        self.passed: dict[str, list[str]] = {k: [] for k in PASSED}

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.folder)

    def check_name(self, path: str) -> None:
        name = os.path.basename(path)
        if not is_utf8(name):
            raise DataError(
                f"{shown_name(str(self.folder / self.rel(path)))}: the name {shown_name(name)!r} is not valid UTF-8 "
                f"(its bytes are shown as \\xNN), so it cannot be a class name or be recorded in a run's splits.json. "
                f"Rename it with UTF-8 characters (e.g. convmv -f latin1 -t utf8), or move it out of {self.folder}.")

    def loops(self, path: str) -> bool:
        """Whether a linked folder leads back into what the scan reads (the root, a folder above it, or
        one inside it): read through the link, every image would be read twice or forever."""
        target = os.path.realpath(path)
        return os.path.commonpath([target, self.real]) in (target, self.real)

    def leave_out(self, path: str, entry_is_link: bool) -> Optional[str]:
        """Why the folder ``path`` is not read (a PASSED key), or None to read it."""
        name = os.path.basename(path)
        if name.startswith("."):
            return "hidden"
        self.check_name(path)
        if entry_is_link and self.loops(path):
            return "link"
        if is_cnnlab_output(path):
            return "output"
        return None

    def walk(self, top: str) -> list[tuple[str, os.stat_result]]:
        """Every image under ``top`` (a class folder), sorted, as (path relative to the tree, stat). Subfolders
        are read too; hidden ones, links that loop, cnnlab's outputs and unreadable ones are passed by and
        counted; files that are not images (by name, or not regular files: pipes, sockets, devices) skipped."""
        found = []
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError as e:
            if top == self._class_top:
                raise DataError(f"{shown_name(top)} cannot be read ({short(e, 120)}); fix its permissions, or move "
                                f"it out of {self.folder}.") from None
            self.passed["unreadable"].append(self.rel(top))
            return found
        for e in entries:
            path = os.path.join(top, e.name)
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                why = self.leave_out(path, e.is_symlink())
                if why:
                    self.passed[why].append(self.rel(path))
                else:
                    found += self.walk(path)
                continue
            rel = self.rel(path)
            if e.name.startswith(".") or not e.name.lower().endswith(IMAGE_SUFFIXES):
                self.skipped.append(rel)
                continue
            self.check_name(path)
            try:
                st = os.stat(path)
            except OSError as err:  # a dangling symlink, a link loop: name it
                raise DataError(f"{self.folder / rel} cannot be read ({short(err, 120)}); replace or remove "
                                f"it.") from None
            if special_kind(st.st_mode) is not None:  # a named pipe, socket or device: never opened
                self.skipped.append(rel)
                continue
            found.append((rel, st))
        return found

    def class_walk(self, top: str) -> list[tuple[str, os.stat_result]]:
        self._class_top = top
        return self.walk(top)

    def class_dirs(self, base: Path) -> list[str]:
        """The class folders of ``base`` (sorted names); other folders passed by and counted."""
        out = []
        for e in sorted(os.scandir(base), key=lambda e: e.name):
            try:
                if not e.is_dir():
                    continue
            except OSError:
                continue
            why = self.leave_out(e.path, e.is_symlink())
            if why:
                self.passed[why].append(self.rel(e.path))
            else:
                out.append(e.name)
        return out

    def fingerprint_line(self, path: str, st: os.stat_result) -> bytes:
        line = f"{path}\t{st.st_size}\t{st.st_mtime_ns}"
        if self.verify == "content":
            h = hashlib.blake2b(digest_size=16)
            with open_regular(self.folder / path) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            line += f"\t{h.hexdigest()}"
        return (line + "\n").encode()


def scan_tree(folder: Path, what: str, decode: Decode = Decode(), verify: str = "stat") -> Tree:
    """List the images of a flat or a train/test tree and fingerprint them (relative
    path, size, mtime of every image, with ``verify="content"`` a hash of its bytes too, and
    the decode settings), so any change shows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder. {HOW} ({what}).")
    if (folder / "train").is_dir():
        if not (folder / "test").is_dir():
            raise DataError(f"{folder} has a train/ folder but no test/ folder. {HOW}.")
        layout, splits = "split", [s for s in ("train", "val", "test") if (folder / s).is_dir()]
    else:
        layout, splits = "flat", [""]
    scan = _Scan(folder, verify)
    base = {s: folder / s if s else folder for s in splits}
    where = base["train" if layout == "split" else ""]
    found: dict[str, dict[str, list]] = {}
    for s in splits:
        found[s] = {}
        for c in scan.class_dirs(base[s]):
            entries = scan.class_walk(str(base[s] / c))
            if not entries and scan.passed["output"] and any(
                    p.startswith(os.path.join(s, c) + os.sep) for p in scan.passed["output"]):
                scan.passed["output"].append(os.path.join(s, c))  # a folder of runs (runs/, sweeps/): no class
                continue
            found[s][c] = entries
    classes = sorted(found[splits[0]])  # train/ or the flat root
    if not classes:
        raise DataError(f"{where} holds no class folders. {HOW}.")
    if len(classes) < 2:
        raise DataError(f"{where} holds one class folder only ({classes[0]}/): a classifier needs at least 2 "
                        f"classes. Add a folder of images for each other class.")
    index = {c: i for i, c in enumerate(classes)}
    h = hashlib.sha256(f"decode\t{decode.key()}\n".encode())
    files: dict[str, list[tuple[str, int]]] = {}
    kinds: set[str] = set()
    for s in splits:
        for e in os.scandir(base[s]):  # loose files beside the class folders
            try:
                if not e.is_dir():
                    scan.skipped.append(os.path.join(s, e.name) if s else e.name)
            except OSError:
                scan.skipped.append(os.path.join(s, e.name) if s else e.name)
        extra = [c for c in found[s] if c not in index]
        if extra:
            raise DataError(f"{base[s]} has class folders that train/ lacks: {', '.join(extra)}. Every class "
                            f"needs training images; add them to {base['train']} or remove those folders.")
        key = s or "all"
        files[key] = []
        for c, entries in found[s].items():
            if not entries:
                raise DataError(f"{base[s] / c} holds no images (JPEG, PNG, BMP, GIF, WebP or TIFF): every class "
                                f"folder needs images. Add some or remove the folder.")
            for path, st in entries:
                h.update(scan.fingerprint_line(path, st))
                files[key].append((path, index[c]))
                kinds.add(os.path.splitext(path)[1].lower().lstrip(".").replace("jpg", "jpeg").upper())
    if layout == "split" and not files.get("test"):
        raise DataError(f"{base['test']} holds no images: a train/ + test/ folder needs test images in test/<class>/ "
                        f"(one folder per class, as in train/), or no test/ folder at all and one folder per class "
                        f"at the root, which cnnlab splits into train, validation and test itself.")
    passed = {k: sorted(v) for k, v in scan.passed.items() if v}
    return Tree(folder, classes, files, h.hexdigest(), kinds, layout, sorted(scan.skipped), passed)


# --------------------------------------------------------------------------- decoding (one image: cnnlab.data.decode)


def _decode_chunk(paths: list[str], decode: Decode, cancel: threading.Event) -> list[Union[np.ndarray, str]]:
    out: list[Union[np.ndarray, str]] = []
    for p in paths:
        if cancel.is_set():  # Ctrl-C in the main thread: stop at the next image
            break
        try:
            out.append(decode_file(p, decode))
        except Exception as e:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError...
            out.append(short(e, 160) or type(e).__name__)
    return out


def decode_all(paths: list[str], decode: Decode = Decode(), threads: Optional[int] = None,
               progress: Optional[bool] = None) -> list[Union[np.ndarray, str]]:
    """Decode files in a thread pool (Pillow releases the GIL while decoding), in order:
    each an array, or the error text for a file that cannot be decoded. A progress bar
    shows on a terminal. Ctrl-C (KeyboardInterrupt) stops every thread at its next image
    and is raised at once, so the command can end in one line."""
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
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    try:
        for done in pool.map(partial(_decode_chunk, decode=decode, cancel=cancel), parts):
            out += done
            if bar is not None:
                bar.update(len(done))
    except BaseException:
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    pool.shutdown(wait=True)
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


def _blob_matches(blob: dict[str, Any], tree: Tree) -> bool:
    """Whether a cache file's contents fit the folder as scanned now: the same classes and layout, every
    file it lists in the scan under the same split with the same class, each label the scan's, one image
    per file. A cache whose labels, classes or file lists were edited is not trusted (it is rebuilt)."""
    try:
        if list(blob["classes"]) != tree.classes or blob["layout"] != tree.layout or set(blob["files"]) != set(tree.files):
            return False
        for s, listed in tree.files.items():
            cls = dict(listed)
            paths = blob["files"][s]
            y, x = blob[f"{s}_y"], blob[f"{s}_x"]
            if len(paths) != len(y) or len(x) != len(y) or len(set(paths)) != len(paths):
                return False
            if any(p not in cls for p in paths) or y.tolist() != [cls[p] for p in paths]:
                return False
        return {p for p, _ in blob["bad"]} | {p for v in blob["files"].values() for p in v} == \
            {p for v in tree.files.values() for p, _ in v}
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def read_tree(folder: Path, label: str, decode: Decode = Decode(), skip_bad: bool = False, verify: str = "stat"
              ) -> tuple[dict[str, Any], Tree, Optional[Path], bool]:
    """Decode (or load from the cache) an image tree: returns the tensors (memory-mapped from the
    cache file when there is one), the scan, the cache file (None if none could be written) and
    whether it came from the cache.
    An image that cannot be decoded raises a DataError naming it unless ``skip_bad``."""
    try:
        tree = scan_tree(folder, label, decode, verify)
    except OSError as e:  # a symbolic link loop (ELOOP), an unreadable folder, a file that vanished
        where = e.filename or folder
        if not os.access(folder, os.R_OK | os.X_OK):  # the root itself, not the train/ inside it that failed
            where = f"{folder} (data.root itself)"
        loop = " (a symbolic link that points back into itself)" if e.errno == errno.ELOOP else ""
        raise DataError(f"{label}: cannot read {where}: {e.strerror or e}{loop}; fix or remove it, "
                        f"or point data.root elsewhere") from None
    key = f"{label}-{hashlib.sha256(decode.key().encode()).hexdigest()[:8]}" if decode.size else label
    blob, path = load_cached(key, tree.folder, tree.fingerprint)
    if blob is not None and not _blob_matches(blob, tree):
        blob = None  # edited: decoded again, and the file replaced
    hit = blob is not None
    if blob is None:
        blob = _decode_tree(tree, decode)
        path = save_cached(blob, key, tree.folder, tree.fingerprint)
        if path is not None:  # read back memory-mapped, as a later run reads it: the decoded copy is freed
            mapped = load_cached(key, tree.folder, tree.fingerprint)[0]
            mapped = mapped if mapped is not None and _blob_matches(mapped, tree) else None
            blob, path = (mapped, path) if mapped is not None else (blob, None)  # None: unusable as a cache
    if blob["bad"] and not skip_bad:
        raise _bad_image_error(tree.folder, *blob["bad"][0])
    return blob, tree, path, hit


def kinds_text(kinds: set[str]) -> str:
    if kinds == {"JPEG"}:
        return "JPEG, lossy"
    return " and ".join(sorted(kinds)) if len(kinds) <= 2 else ", ".join(sorted(kinds))


def _skipped_text(skipped: list[str], passed: Optional[dict[str, list[str]]] = None) -> str:
    """The data: line's account of what was not read: files that are not images (special files such as
    named pipes among them), then each kind of folder passed by (:data:`PASSED`), each with a few names."""
    def some(names: list[str]) -> str:
        names = sorted({shown_name(n) for n in names})
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    text = ""
    if skipped:
        text += (f"; {len(skipped)} file{'s' if len(skipped) != 1 else ''} that are not images skipped "
                 f"({some([os.path.basename(p) for p in skipped])})")
    for why, paths in (passed or {}).items():
        if paths:
            one, many = PASSED[why]
            text += f"; {len(paths)} {one if len(paths) == 1 else many} skipped ({some(paths)})"
    return text


def load_imagefolder(root: Path, download: bool = False, *, resize: Any = None, resize_policy: str = "stretch",
                     resize_mode: str = "bilinear", skip_bad_images: bool = False, verify: str = "stat") -> RawData:
    """A flat ``root/<class>/...`` folder or a ``train/<class>/`` + ``test/<class>/`` (+ ``val/``)
    tree at ``root``. Classes are the sorted class-folder names; mean/std come from the
    training images (a flat folder's are computed after the split, by cnnlab.data.splits).
    With ``resize`` every image is brought to that size when decoded (``resize_policy``,
    interpolation ``resize_mode``); without it the images must share one size. ``verify``: "stat" (the
    cache follows each image's size and mtime) or "content" (a hash of each image's bytes too)."""
    root = Path(root)
    if verify not in ("stat", "content"):
        raise DataError(f"data.verify: {verify!r}; use stat (a changed size or mtime means decode again) or content "
                        f"(a hash of every image's bytes too)")
    blob, tree, cache_path, hit = read_tree(root, "imagefolder", Decode.of(resize, resize_policy, resize_mode),
                                            skip_bad=skip_bad_images, verify=verify)
    flat = blob["layout"] == "flat"
    n = sum(len(v) for v in blob["files"].values())
    bad = f"; {len(blob['bad'])} unreadable image(s) skipped" if blob["bad"] else ""
    source = (f"image folder ({'flat, ' if flat else ''}{n:,} {kinds_text(tree.kinds)} images) at {root}"
              f"{_skipped_text(tree.skipped, tree.passed)}{bad}")
    if not flat and not len(blob["test_y"]):
        raise DataError(f"{root / 'test'} holds no readable image ({len(blob['bad'])} skipped as unreadable, see "
                        f"data.skip_bad_images): there is nothing to test on. Replace them, or add test images.")
    x = blob["all_x" if flat else "train_x"]
    mean, std = (blob["mean"], blob["std"]) if not flat else ((0.0,) * x.shape[1], (1.0,) * x.shape[1])
    return RawData(
        x, blob["all_y" if flat else "train_y"],
        x[:0] if flat else blob["test_x"], blob["all_y"][:0] if flat else blob["test_y"],
        list(blob["classes"]), tuple(mean), tuple(std), source=source, cache_path=cache_path, from_cache=hit,
        mapped=cache_path is not None,
        val_x=blob.get("val_x"), val_y=blob.get("val_y"), layout=blob["layout"], root=root,
        files={("train" if flat else s): list(v) for s, v in blob["files"].items()},
        bad_images=[tuple(b) for b in blob["bad"]], skipped=list(tree.skipped),
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
    options=("resize", "resize_policy", "resize_mode", "skip_bad_images", "verify"),
))
