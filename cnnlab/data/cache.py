"""The decoded-image cache: uint8 tensors of an image folder, saved once under the
cache directory so later runs skip decoding.

The cache directory is ``$CNNLAB_CACHE``, else ``~/.cache/cnnlab``; it is never the
data root, which may be read-only or shared. A cache file is named by the data set,
a hash of the folder's absolute path and the folder's fingerprint (every image's
path, size and mtime; with ``data.verify: content`` a hash of every image's bytes too),
so a changed folder is decoded again and the cache of its earlier state is removed.
Files are written atomically (a temporary file, locked while it is written, renamed
over the target; a temporary file nobody holds is a killed writer's and the next run
removes it) and read with ``weights_only=True``. Each tensor's CRC-32 is stored beside
it and checked on every load, and the image folder's loader checks the labels against
the folder's scan, so a damaged, edited or hostile cache file is ignored and rebuilt,
never unpickled nor trusted. Cache files are read memory-mapped
(``mmap=True``): pages come from disk when touched, so a data set larger than memory
can be streamed from its cache (:mod:`cnnlab.data.placement`), and copying a cached set
into memory costs no more than reading it. Sets read from their own files (MNIST, the
CIFAR-10 python batches) get a cache file only when they must be streamed (:func:`mapped_copy`).
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any, Optional

import torch

try:
    import fcntl
except ImportError:  # Windows: temporary files are left to the user
    fcntl = None  # type: ignore[assignment]

VERSION = 2  # 2: each tensor's CRC-32 stored beside it ("checksums")
SUBDIR = "decoded"  # beside what else may live in the cache directory one day


def cache_dir() -> Path:
    """Where cnnlab keeps caches: ``$CNNLAB_CACHE``, else ``~/.cache/cnnlab``."""
    env = os.environ.get("CNNLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnlab"


def decoded_dir() -> Path:
    """The folder of decoded image-folder caches."""
    return cache_dir() / SUBDIR


def _stem(label: str, folder: Path) -> str:
    # The folder's absolute path is part of the name so one directory serves many
    # folders; the fingerprint follows it.
    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:10]
    return f"{label}-{where}"


def cache_file(label: str, folder: Path, fingerprint: str) -> Path:
    """The cache file of ``folder`` (read as data set ``label``) in the state ``fingerprint``."""
    return decoded_dir() / f"{_stem(label, folder)}-{fingerprint[:16]}.pt"


def load_cached(label: str, folder: Path, fingerprint: str) -> tuple[Optional[dict[str, Any]], Path]:
    """The cached tensors of ``folder`` if a cache of this very state exists and reads
    back whole, else None; and the cache file's path."""
    path = cache_file(label, folder, fingerprint)
    remove_stale_temporaries()
    if not path.is_file():
        return None, path
    try:
        blob = read_mapped(path)
    except Exception:  # unreadable or from another torch: decode again
        return None, path
    if not isinstance(blob, dict) or blob.get("version") != VERSION or blob.get("fingerprint") != fingerprint \
            or not checksums_match(blob):
        return None, path
    return blob, path


def checksums(blob: dict[str, Any]) -> dict[str, int]:
    """The CRC-32 of each tensor among ``blob``'s values (its bytes as stored)."""
    return {k: _crc(t) for k, t in blob.items() if isinstance(t, torch.Tensor)}


def checksums_match(blob: dict[str, Any]) -> bool:
    """Whether every tensor of a cache file still has the CRC-32 written with it (and none is missing)."""
    saved = blob.get("checksums")
    if not isinstance(saved, dict):
        return False
    tensors = {k for k, t in blob.items() if isinstance(t, torch.Tensor)}
    if tensors != set(saved):
        return False
    try:
        return all(_crc(blob[k]) == saved[k] for k in tensors)
    except Exception:  # a tensor whose pages cannot be read (file cut short): not usable
        return False


def _crc(t: torch.Tensor) -> int:
    t = t.detach().cpu().contiguous()
    return zlib.crc32(t.view(-1).view(torch.uint8).numpy().data) if t.numel() else 0


def save_cached(blob: dict[str, Any], label: str, folder: Path, fingerprint: str) -> Optional[Path]:
    """Save decoded tensors (``version`` and ``fingerprint`` are added) and remove
    the caches of earlier states of the folder. Returns the file, or None when the
    cache directory cannot be written (the run goes on without a cache)."""
    directory = decoded_dir()
    path = cache_file(label, folder, fingerprint)
    try:
        if not _writable(_nearest_existing(directory)):
            return None
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, {**blob, "version": VERSION, "fingerprint": fingerprint, "checksums": checksums(blob)})
    except (OSError, RuntimeError):  # RuntimeError: torch.save's word for a failed write (a full disk)
        return None
    for old in directory.glob(f"{_stem(label, folder)}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def read_mapped(path: Path) -> Any:
    """A cache file's contents, tensors memory-mapped from it (read-only use: pages are private copies)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def mapped_copy(tensors: dict[str, torch.Tensor], label: str) -> tuple[Optional[dict[str, torch.Tensor]], Path]:
    """``tensors`` saved once under the cache directory (named by ``label`` and a hash of their
    bytes, so the same data reuses the file) and read back memory-mapped; None when the cache
    directory cannot be written. For data sets without a decoded cache that must be streamed."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    path = decoded_dir() / f"{label}-stream-{h.hexdigest()}.pt"
    for attempt in range(2):
        if path.is_file():
            try:
                blob = read_mapped(path)
                if isinstance(blob, dict) and set(blob) - {"checksums"} == set(tensors) and checksums_match(blob):
                    return {k: blob[k] for k in tensors}, path
            except Exception:  # damaged: written again below
                pass
        if attempt or not _writable(_nearest_existing(decoded_dir())):
            break
        try:
            decoded_dir().mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries()
            copy = {k: t.contiguous() for k, t in tensors.items()}
            write_atomic(path, {**copy, "checksums": checksums(copy)})
        except (OSError, RuntimeError):
            break
    return None, path


TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, blob: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path`` (held under an exclusive lock while written, so
    :func:`remove_stale_temporaries` tells a live writer's from a killed one's), then renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)  # lets go of the lock


def remove_stale_temporaries() -> list[Path]:
    """Remove the temporary files of cache writes that were killed (SIGTERM, SIGKILL, a power cut) and
    so never renamed: those no process holds locked. Returns what was removed."""
    removed: list[Path] = []
    directory = decoded_dir()
    if fcntl is None or not directory.is_dir():
        return removed
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(".") and e.name.endswith(TMP_SUFFIX)]
    except OSError:
        return removed
    for name in names:
        tmp = directory / name
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: BlockingIOError, left alone
            if os.path.exists(tmp) and os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                os.unlink(tmp)
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _writable(directory: Path) -> bool:
    """Whether we may write into ``directory``. Permission bits are honoured even
    for root (who could write anyway), so a folder shared read-only stays clean."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(directory, os.W_OK)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
