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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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


def count_tree(folder: Path) -> dict[str, int]:
    """Images under ``train/<class>/`` and ``test/<class>/``, per split."""
    counts = {}
    for split in ("train", "test"):
        n = 0
        if (folder / split).is_dir():
            for c in os.scandir(folder / split):
                if c.is_dir():
                    n += sum(1 for e in os.scandir(c.path) if e.name.lower().endswith(IMAGE_SUFFIXES))
        counts[split] = n
    return counts
