"""CIFAR-10: the official python batches (``<root>/cifar-10-batches-py``) or an
image-folder export of them (``<root>/cifar10-jpg``, ``<root>/cifar10`` or
``<root>`` holding ``train/<class>/`` and ``test/<class>/`` for the ten classes).

The batches are read with torchvision, which checks their MD5 sums before
unpickling them; an export is decoded and cached like any image folder, then
checked to be 32x32 RGB with exactly the ten classes.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.check import count_tree, file_entry
from cnnlab.data.common import ROOT_HINT, DataError, DataSource, RawData, short, try_download
from cnnlab.data.sources.imagefolder import kinds_text, read_tree
from cnnlab.registry import DATASETS, DatasetInfo

BATCHES = "cifar-10-batches-py"  # torchvision's CIFAR10.base_folder
CIFAR10 = DatasetInfo(
    name="cifar10", title="CIFAR-10",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    in_channels=3, image_size=32, train_size=50_000, test_size=10_000,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), default_val_size=5_000, folder=BATCHES,
    # the seven python batch files and their MD5s (torchvision's CIFAR10.train_list + test_list + meta)
    files=(
        ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ("test_batch", "40351d587109b95175f43aff81a1287e"),
        ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    ),
)
CLASSES = list(CIFAR10.classes or ())


def export_candidates(root: Path) -> list[Path]:
    return [root / "cifar10-jpg", root / "cifar10", root]


def is_export(folder: Path) -> bool:
    train = folder / "train"
    return (folder / "test").is_dir() and train.is_dir() and all((train / c).is_dir() for c in CLASSES)


def _bad_files(folder: Path, error: BaseException) -> str:
    """Which batch files are missing or fail their MD5 sum, for the error message."""
    from torchvision.datasets.utils import check_integrity

    missing, corrupt = [], []
    for name, md5 in CIFAR10.files:
        path = folder / name
        if not path.exists():
            missing.append(name)
        elif not check_integrity(str(path), md5):
            corrupt.append(name)
    parts = ([f"{', '.join(corrupt)} fail{'s' if len(corrupt) == 1 else ''} the MD5 check"] if corrupt else []) + \
            ([f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"] if missing else [])
    return "; ".join(parts) or f"torchvision could not read them ({short(error, 160)})"


def _official(root: Path) -> RawData:
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    folder = root / BATCHES
    parts = {}
    for split in ("train", "test"):
        try:
            ds = TorchvisionCIFAR10(str(root), train=split == "train", download=False)
        except Exception as e:  # torchvision: "Dataset not found or corrupted"
            raise DataError(
                f"the CIFAR-10 python batches in {folder} cannot be used: {_bad_files(folder, e)}. "
                f"Delete that folder and run with data.download=true, or put an intact copy of "
                f"cifar-10-batches-py (from cifar-10-python.tar.gz) there."
            ) from None
        parts[split] = (
            torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(ds.targets, dtype=torch.int64),
        )
    return RawData(
        parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], list(CLASSES),
        CIFAR10.mean, CIFAR10.std, source=f"official python batches at {folder}",
    )  # fmt: skip


def _export(folder: Path) -> RawData:
    blob, tree, cache_path, hit = read_tree(folder, "cifar10")
    if list(blob["classes"]) != CLASSES:
        raise DataError(
            f"{folder} is not a CIFAR-10 export: its train/ classes are {', '.join(blob['classes'])}, expected "
            f"exactly {', '.join(CLASSES)}. Use data.name=imagefolder with data.root={folder} for other sets."
        )
    shape = tuple(blob["train_x"].shape[1:])
    if shape != (3, 32, 32):
        raise DataError(
            f"{folder} is not a CIFAR-10 export: its images are {shape[1]}x{shape[2]} with {shape[0]} channel(s), "
            f"expected 32x32 RGB. Use data.name=imagefolder with data.root={folder} for other image folders."
        )
    return RawData(
        blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], list(CLASSES),
        CIFAR10.mean, CIFAR10.std, source=f"image-folder export ({kinds_text(tree.kinds)}) at {folder}",
        cache_path=cache_path, from_cache=hit, mapped=cache_path is not None,
    )  # fmt: skip


def load_cifar10(root: Path, download: bool = False, allow_modified: bool = False) -> RawData:
    """CIFAR-10 from the official python batches (``<root>/cifar-10-batches-py``) or,
    failing those, an image-folder export (``<root>/cifar10-jpg`` or ``<root>/cifar10``
    or ``<root>`` itself holding ``train/<class>/`` and ``test/<class>/``)."""
    root = Path(root)
    batches = root / BATCHES
    if batches.is_dir():
        return _official(root)
    for folder in export_candidates(root):
        if is_export(folder):
            return _export(folder)
    note = "data.download is false, so no download was tried."
    if download:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        reason = try_download(lambda: TorchvisionCIFAR10(str(root), train=True, download=True), [root])
        if reason is None and batches.is_dir():
            return _official(root)
        note = f"torchvision's download failed: {reason}."
    raise DataError(
        f"CIFAR-10 not found in {root} {ROOT_HINT}: it holds neither the official python batches "
        f"({batches}) nor an image-folder export ({root / 'cifar10-jpg'} or {root / 'cifar10'} with "
        f"train/<class>/ and test/<class>/ for the ten classes); {note} To provide it, extract "
        f"cifar-10-python.tar.gz into {root}, or put an image-folder export there, or point data.root or "
        f"CNNLAB_DATA at a folder that holds one, or run with data.download=true where the internet can be reached."
    )


def describe_cifar10(info: DatasetInfo, root: Path, check: bool) -> dict[str, Any]:
    root = Path(root)
    batches = root / BATCHES
    base = {"name": info.name, "files": []}
    if batches.is_dir():
        files = [file_entry(batches / f, md5, check) for f, md5 in info.files if (batches / f).is_file()]
        bad = [Path(f["path"]).name for f in files if f["md5_ok"] is False]
        complete = len(files) == len(info.files)
        return {
            **base, "present": complete, "ok": complete and not bad, "location": str(batches),
            "source": "official python batches", "files": files,
            "message": ("incomplete: some batch files are missing" if not complete else
                        f"MD5 mismatch: {', '.join(bad)}" if bad else
                        "official files, MD5 checked" if check else "official files (MD5 not checked)"),
        }  # fmt: skip
    for folder in export_candidates(root):
        if is_export(folder):
            counts = count_tree(folder)
            return {
                **base, "present": True, "ok": counts["train"] > 0 and counts["test"] > 0, "location": str(folder),
                "source": "image-folder export (not the official bytes)", "images": counts,
                "message": f"{counts['train']} training and {counts['test']} test images (not checksummed)",
            }  # fmt: skip
    return {
        **base, "present": False, "ok": False, "location": str(root),
        "source": None, "message": f"neither {batches} nor an image-folder export ({root / 'cifar10-jpg'}) found",
    }  # fmt: skip


DATASETS.register("cifar10")(DataSource(CIFAR10, load_cifar10, partial(describe_cifar10, CIFAR10),
                                         options=("allow_modified",)))
