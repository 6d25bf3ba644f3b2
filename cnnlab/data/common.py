"""What every data source shares: the error type, the whole-set container, the
registry entry, where the data root is, and small file helpers.

A source module (``cnnlab/data/sources/*.py``) reads one format into a
:class:`RawData` and registers itself in ``DATASETS`` as a :class:`DataSource`:
its loader, its facts (:class:`~cnnlab.registry.DatasetInfo`) and how
``cnnlab data list|check`` describes what is on disk.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import numpy as np
import torch

from cnnlab.registry import DatasetInfo


class DataError(RuntimeError):
    """Data that is missing, corrupt or cannot be split as asked; the message says how to fix it."""


ROOT_HINT = "(the data root is data.root, else $CNNLAB_DATA, else ~/.cache/cnnlab)"


@dataclass
class RawData:
    """A whole data set as loaded from disk, on the CPU.

    ``train_x``/``test_x`` are uint8 ``[N, C, H, W]``, ``train_y``/``test_y`` int64 ``[N]``.
    ``mean``/``std`` are per channel on the 0..1 scale. ``source`` says what was read
    (official files or an image-folder export, and where). ``cache_path`` is the decoded
    tensor cache of an image folder (None for the others), ``from_cache`` whether this
    load came from it, ``mapped`` whether the image tensors are memory-mapped from it (pages
    read from disk when touched, see :mod:`cnnlab.data.placement`).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    cache_path: Optional[Path] = None
    from_cache: bool = False
    mapped: bool = False
    # image folders: a val/ folder's images; "flat" when train_x holds every image of a root/<class>/
    # folder (test_x empty; cnnlab.data.splits splits it); the data root; each split's files (paths
    # relative to root, in tensor order); images skipped as unreadable [(path, why)]; non-image files
    val_x: Optional[torch.Tensor] = None
    val_y: Optional[torch.Tensor] = None
    layout: str = "split"
    root: Optional[Path] = None
    files: Optional[dict[str, list[str]]] = None
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataSource:
    """One ``DATASETS`` entry: the data set's facts, its loader ``load(root, download, **options)``
    and ``describe(root, check)``, the dict ``cnnlab data list|check`` prints. ``options`` names
    the ``data.*`` settings the loader takes as keyword arguments (image folders: resizing)."""

    info: DatasetInfo
    load: Callable[..., RawData]
    describe: Callable[[Path, bool], dict[str, Any]]
    options: tuple[str, ...] = ()


def resolve_root(data_cfg: Any = None) -> Path:
    """The data root: ``data.root``, else ``$CNNLAB_DATA``, else ``~/.cache/cnnlab``.
    ``data_cfg`` is a DataConfig, a dict or None."""
    root = data_cfg.get("root") if isinstance(data_cfg, dict) else getattr(data_cfg, "root", None)
    if root:
        return Path(root).expanduser()
    env = os.environ.get("CNNLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cnnlab"


# --------------------------------------------------------------------------- small file helpers


def read_bytes(path: Path) -> np.ndarray:
    """A file's bytes as a writable uint8 array, gunzipping ``.gz`` files."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return np.frombuffer(bytearray(f.read()), dtype=np.uint8)
        return np.fromfile(path, dtype=np.uint8)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} could not be read ({e}); replace it with an intact copy.") from None


# what a path that is not a regular file is, as messages and the data: line say it
SPECIAL_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


class NotRegularFile(OSError):
    """A path that is a named pipe, socket, device or folder where a file's bytes were wanted."""


def special_kind(mode: int) -> Optional[str]:
    """None for a regular file's ``st_mode``, else what it is ("a named pipe", "a socket", ...)."""
    return None if stat.S_ISREG(mode) else SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: Union[str, Path]) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (links followed), else NotRegularFile.

    A named pipe would block ``open()`` until a writer comes (forever), a device may never end: they
    are told apart by ``stat`` before anything opens them, and again on the opened descriptor
    (non-blocking, so a file swapped for a pipe in between cannot block either)."""
    kind = special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def shown_name(name: str) -> str:
    """A file name as text a terminal and JSON take: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    """Whether a name read from the disk is valid UTF-8 (Python keeps other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def short(e: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters (an OS error as its plain reason, no errno)."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (" (a symbolic link that points back into itself)" if e.errno == errno.ELOOP else "")
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def try_download(fn: Callable[[], Any], made: list[Path]) -> Optional[str]:
    """Run a torchvision download; None on success, else a one-line reason. Of the
    folders in ``made`` (outermost first), those the attempt created and left empty
    are removed again, so a failed download leaves nothing behind."""
    existed = {p: p.exists() for p in made}
    try:
        fn()
        return None
    except Exception as e:  # urllib errors, RuntimeError, OSError...: all mean "no data"
        reason = short(e)
    for p in reversed(made):
        if not existed[p] and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return reason


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images on the 0..1 scale,
    from a 256-bin histogram per channel (far cheaper than widening every pixel)."""
    return stats_of_histograms(channel_histograms(x)) if x.numel() else ((0.0,) * x.shape[1], (1.0,) * x.shape[1])


def channel_histograms(x: torch.Tensor) -> torch.Tensor:
    """``[C, 256]`` pixel counts per channel of uint8 images; summed over chunks they give the
    histograms of the whole set (how a streamed split's statistics are computed)."""
    return torch.stack([torch.bincount(x[:, ch].reshape(-1), minlength=256) for ch in range(x.shape[1])])


def stats_of_histograms(hists: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale from :func:`channel_histograms`."""
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for hist in hists.double():
        n = hist.sum()
        if n == 0:
            mean.append(0.0), std.append(1.0)
            continue
        m = (hist * values).sum() / n
        var = ((hist * values * values).sum() / n - m * m).clamp(min=0)
        mean.append(float(m) / 255)
        s = float(var.sqrt()) / 255
        std.append(s if s > 0 else 1.0)  # a constant channel: avoid dividing by zero later
    return tuple(mean), tuple(std)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> one-channel uint8 luma (rounded), done in chunks to bound memory."""
    out = torch.empty(x.shape[0], 1, *x.shape[2:], dtype=torch.uint8)
    w = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    for i in range(0, len(x), 4096):
        out[i : i + 4096] = (x[i : i + 4096].float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return out
