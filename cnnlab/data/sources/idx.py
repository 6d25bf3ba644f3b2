"""MNIST and Fashion-MNIST: the four IDX files in torchvision's layout (``<root>/MNIST/raw``).

IDX files are parsed directly, with their magic numbers and sizes checked, either
uncompressed or as the official ``.gz`` downloads; torchvision is used only to
download them. Both sets are registered here with their facts.
"""
from __future__ import annotations

import hashlib
import struct
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cnnlab.data.check import file_entry
from cnnlab.data.common import ROOT_HINT, DataError, DataSource, RawData, read_bytes, try_download
from cnnlab.registry import DATASETS, DatasetInfo

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

MNIST = DatasetInfo(
    name="mnist", title="MNIST", classes=tuple(str(i) for i in range(10)), in_channels=1, image_size=28,
    train_size=60_000, test_size=10_000, mean=(0.1307,), std=(0.3081,), default_val_size=10_000, folder="MNIST",
    # MD5s of the uncompressed official files (torchvision only knows those of the .gz files)
    files=(
        ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
        ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
        ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
    ),
    packed_files=(
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
)
FASHION_MNIST = DatasetInfo(
    name="fashion_mnist", title="Fashion-MNIST",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    in_channels=1, image_size=28, train_size=60_000, test_size=10_000, mean=(0.2860,), std=(0.3530,),
    default_val_size=10_000, folder="FashionMNIST",
    files=(
        ("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        ("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
        ("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
        ("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
    ),
    packed_files=(
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
)


def find(raw_dir: Path, name: str) -> Optional[Path]:
    """``raw_dir/name``, else its ``.gz``, else None."""
    for candidate in (raw_dir / name, raw_dir / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def parse(path: Path, images: bool, digests: Optional[dict] = None) -> np.ndarray:
    """Parse one IDX file: [N, H, W] uint8 for images, [N] for labels. ``digests`` (a dict) receives
    the MD5 of the uncompressed bytes under ``path``: hashed from memory, it costs no second read."""
    data = read_bytes(path)
    if digests is not None:
        digests[path] = hashlib.md5(memoryview(data)).hexdigest()
    header = 16 if images else 8
    what = "image" if images else "label"
    expected_magic = IMAGES_MAGIC if images else LABELS_MAGIC
    fix = "Replace it with the official file (or delete it and run with data.download=true)."
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than the {header}-byte IDX header. {fix}")
    magic = struct.unpack(">I", data[:4].tobytes())[0]
    if magic != expected_magic:
        raise DataError(
            f"{path} is not an IDX {what} file: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}. {fix}"
        )
    if images:
        n, h, w = struct.unpack(">III", data[4:16].tobytes())
        shape: tuple[int, ...] = (n, h, w)
    else:
        (n,) = struct.unpack(">I", data[4:8].tobytes())
        shape = (n,)
    need = header + int(np.prod(shape))
    if len(data) != need:
        kind = "truncated" if len(data) < need else "longer than its header says"
        raise DataError(
            f"{path} is {kind}: the header announces {' x '.join(map(str, shape))} {what} bytes "
            f"({need} bytes with the header) but the file has {len(data)}. {fix}"
        )
    return data[header:].reshape(shape)


def load_idx_set(info: DatasetInfo, root: Path, download: bool, allow_modified: bool = False) -> RawData:
    """Read (downloading first if asked and missing) the IDX set described by ``info``; a file whose MD5
    is not the official one is refused (DataError) unless ``allow_modified``."""
    root, folder, title = Path(root), info.folder, info.title
    raw_dir = root / folder / "raw"
    paths = {name: find(raw_dir, name) for name in FILES}
    missing = [n for n, p in paths.items() if p is None]
    note = "data.download is false, so no download was tried."
    if missing and download:
        import torchvision.datasets as tvd

        reason = try_download(
            lambda: getattr(tvd, folder)(str(root), train=False, download=True), [root, root / folder, raw_dir]
        )
        paths = {name: find(raw_dir, name) for name in FILES}
        missing = [n for n, p in paths.items() if p is None]
        note = f"torchvision's download failed: {reason}." if reason else "the download did not produce them."
    if missing:
        raise DataError(
            f"{title} not found: {', '.join(missing)} missing from {raw_dir} {ROOT_HINT}; {note} "
            f"To provide it, put the four uncompressed IDX files ({', '.join(FILES)}) or their official .gz "
            f"files in {raw_dir}, or point data.root or CNNLAB_DATA at a folder that holds {folder}/raw/, "
            f"or run with data.download=true where the internet can be reached."
        )
    digests: dict[Path, str] = {}
    xs = {n: parse(p, images="images" in n, digests=digests) for n, p in paths.items()}  # type: ignore[arg-type]
    classes = list(info.classes or ())
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = xs[f"{prefix}-images-idx3-ubyte"], xs[f"{prefix}-labels-idx1-ubyte"]
        if len(x) != len(y):
            raise DataError(
                f"{title} {split} files disagree: {paths[f'{prefix}-images-idx3-ubyte']} holds {len(x)} images but "
                f"{paths[f'{prefix}-labels-idx1-ubyte']} holds {len(y)} labels. Replace them with the official files."
            )
        if len(y) and int(y.max()) >= len(classes):
            raise DataError(
                f"{paths[f'{prefix}-labels-idx1-ubyte']} holds label {int(y.max())}, but {title} has only "
                f"{len(classes)} classes: the file is corrupt. Replace it with the official file."
            )
        out[split] = (torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    # The official files' MD5s: a file with one byte changed parses fine and would be trained on as MNIST.
    expected = dict(info.files)
    bad = [n for n in FILES if n in expected and digests[paths[n]] != expected[n]]  # type: ignore[index]
    modified = [f"{paths[n]} (MD5 {digests[paths[n]]}, the official file's is {expected[n]})"  # type: ignore[index]
                for n in bad]
    if modified and not allow_modified:
        raise DataError(
            f"{title}: {'; '.join(modified)}: not the official file{'s' if len(modified) > 1 else ''} (modified or "
            f"corrupt). Replace {'them' if len(modified) > 1 else 'it'} with the official file (or delete and run "
            f"with data.download=true), or set data.allow_modified: true to train on it anyway (summary.json's "
            f"data_source then says so)."
        )
    return RawData(
        out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes, tuple(info.mean or ()),
        tuple(info.std or ()),
        source=(f"modified IDX files at {raw_dir} (data.allow_modified: {', '.join(bad)} not the official "
                "file's MD5)" if bad else f"official IDX files at {raw_dir} (MD5 checked)"),
    )  # fmt: skip


def describe_idx_set(info: DatasetInfo, root: Path, check: bool) -> dict[str, Any]:
    """The four files of an IDX set under ``root``, with their MD5s when ``check``."""
    raw_dir = Path(root) / info.folder / "raw"
    expected = dict(info.files) | dict(info.packed_files)
    files, missing = [], []
    for fname in FILES:
        p = find(raw_dir, fname)
        if p is None:
            missing.append(fname)
        else:
            files.append(file_entry(p, expected.get(p.name), check))
    bad = [Path(f["path"]).name for f in files if f["md5_ok"] is False]
    if missing:
        message = f"missing {', '.join(missing)} in {raw_dir}"
    elif bad:
        message = f"MD5 mismatch (corrupt or not the official file): {', '.join(bad)}"
    else:
        message = "official files, MD5 checked" if check else "official files (MD5 not checked)"
    return {
        "name": info.name, "present": not missing, "ok": not missing and not bad, "location": str(raw_dir),
        "source": "official IDX files", "files": files, "message": message,
    }  # fmt: skip


def load_mnist(root: Path, download: bool = False, allow_modified: bool = False) -> RawData:
    """MNIST from ``<root>/MNIST/raw`` (torchvision's layout)."""
    return load_idx_set(MNIST, root, download, allow_modified)


def load_fashion_mnist(root: Path, download: bool = False, allow_modified: bool = False) -> RawData:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw`` (torchvision's layout)."""
    return load_idx_set(FASHION_MNIST, root, download, allow_modified)


DATASETS.register("mnist")(DataSource(MNIST, load_mnist, partial(describe_idx_set, MNIST), options=("allow_modified",)))
DATASETS.register("fashion_mnist")(
    DataSource(FASHION_MNIST, load_fashion_mnist, partial(describe_idx_set, FASHION_MNIST), options=("allow_modified",))
)
