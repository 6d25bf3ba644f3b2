"""``cnnlab data list|check``: what each registered data set looks like on disk.

Each source registers a ``describe(root, check)`` function with its loader; this
module asks every one of them and holds the helpers they share (a file's size and
MD5 against the official sum, image counts of a folder tree). Nothing is decoded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from cnnlab.data.common import md5, resolve_root
from cnnlab.registry import DATASETS

# what Pillow reads for us; anything else in a class folder is skipped and counted
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def describe_data(root: Union[str, Path, None] = None, check: bool = True) -> list[dict[str, Any]]:
    """What each data set looks like under ``root`` (default: :func:`resolve_root`),
    for ``cnnlab data list|check``. One dict per data set with ``name``, ``present``,
    ``ok`` (present and every check passed), ``location``, ``source``, ``files`` (each
    ``path``, ``bytes``, ``md5``, ``expected_md5``, ``md5_ok``; MD5s only when
    ``check``), ``images`` (per split, for image folders) and a one-line ``message``."""
    root = resolve_root(None) if root is None else Path(root).expanduser()
    return [DATASETS.get(name).describe(root, check) for name in DATASETS]


def file_entry(path: Path, expected_md5: Optional[str], check: bool) -> dict[str, Any]:
    """One file as ``cnnlab data check`` reports it (MD5 computed only when ``check``)."""
    entry: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "md5": None, "md5_ok": None}
    if check and expected_md5:
        entry["md5"] = md5(path)
        entry["md5_ok"] = entry["md5"] == expected_md5
    entry["expected_md5"] = expected_md5
    return entry


def _images_under(folder: str) -> int:
    """Image files under ``folder``: regular files only (a named pipe called x.png is no image), hidden
    folders and cnnlab's own run and sweep folders left out, as the loader leaves them out."""
    from cnnlab.outputs import is_cnnlab_output

    n = 0
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not is_cnnlab_output(os.path.join(dirpath, d))]
        n += sum(1 for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
                 and os.path.isfile(os.path.join(dirpath, f)))
    return n


def count_tree(folder: Path) -> dict[str, int]:
    """Images under ``train/<class>/`` and ``test/<class>/`` (and ``val/<class>/``), per split;
    for a flat ``<class>/`` folder, ``{"all": n}``."""
    counts = {}
    if not (folder / "train").is_dir():
        dirs = [c.path for c in os.scandir(folder) if c.is_dir() and not c.name.startswith(".")] if folder.is_dir() else []
        return {"all": sum(_images_under(c) for c in dirs)}
    for split in ("train", "val", "test"):
        if (folder / split).is_dir():
            counts[split] = sum(_images_under(c.path) for c in os.scandir(folder / split) if c.is_dir())
        elif split != "val":
            counts[split] = 0
    return counts
