"""Shared by the tests/test_data_*.py files: where the real data sets are, and tiny
data sets written on the fly (IDX files, PNG image trees)."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.config.schema import DataConfig


def real_root() -> Path:
    """The shared data sets: $CNNLAB_DATA, else shared/datasets beside the repo."""
    env = os.environ.get("CNNLAB_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "datasets", Path("/work/shared/datasets")]
    for c in candidates:
        if (c / "MNIST" / "raw").is_dir():
            return c
    pytest.skip(f"no real data sets found (looked in {', '.join(map(str, candidates))}); set CNNLAB_DATA")


def cfg(**kw) -> DataConfig:
    kw.setdefault("download", False)
    return DataConfig(**kw)


def listing(folder: Path) -> list[Path]:
    """Every path under ``folder``, relative and sorted (to show nothing was written there)."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def write_idx(folder: Path, n_train=5, n_test=3, size=28, gz=False, seed=0) -> dict[str, np.ndarray]:
    """A tiny but valid MNIST raw folder; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[prefix] = (x, y)
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, size, size) + x.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + y.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return arrays


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)


def make_tree(root: Path, counts=None, size=(8, 6), seed=0) -> dict[str, list[tuple[np.ndarray, str]]]:
    """train/ and test/ class folders of random RGB PNGs; returns what was written, in file order."""
    counts = counts or {"train": {"ant": 3, "bee": 2, "cat": 2}, "test": {"ant": 1, "cat": 2}}
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[np.ndarray, str]]] = {}
    for split, per_class in counts.items():
        written[split] = []
        for cls in sorted(per_class):
            for i in range(per_class[cls]):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                write_png(root / split / cls / f"{i:03d}.png", arr)
                written[split].append((arr, cls))
    return written
