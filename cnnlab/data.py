"""Data sets as uint8 tensors on the device, their splits, batches and preprocessing.

Each data set (MNIST, Fashion-MNIST, CIFAR-10, any ``train/<class>/`` +
``test/<class>/`` image folder) is read once into whole-set uint8 tensors
(:class:`RawData`), split deterministically into train / validation / test
(:func:`load_splits`) and moved to the device in one go. Training then draws
index tensors from :func:`batches` and turns uint8 batches into normalised
float32 input with :class:`Preprocess`, all batched on the device, with no
DataLoader and no per-sample Python. MNIST-style IDX files are parsed directly
(with their magic numbers and sizes checked); torchvision is used to download
and to check the official files. Image folders (including CIFAR-10 image-folder
exports) are decoded once and cached as a tensor file keyed by a fingerprint of
the folder, so later runs load in a fraction of a second and a changed folder is
re-read. Anything missing or broken raises :class:`DataError`, whose message
says which files, where they were looked for and how to provide them.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch

from cnnlab import augment
from cnnlab.registry import DATASETS


class DataError(RuntimeError):
    """Data that is missing, corrupt or cannot be split as asked; the message says how to fix it."""


# --------------------------------------------------------------------------- containers


@dataclass
class RawData:
    """A whole data set as loaded from disk, on the CPU.

    ``train_x``/``test_x`` are uint8 ``[N, C, H, W]``, ``train_y``/``test_y`` int64 ``[N]``.
    ``mean``/``std`` are per channel on the 0..1 scale. ``source`` says what was read
    (official files or an image-folder export, and where). ``cache_path`` is the decoded
    tensor cache of an image folder (None for the others), ``from_cache`` whether this
    load came from it.
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


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set without reading it (None: only the files tell).

    ``default_val_size`` None means 10 % of the training images (image folders).
    """

    num_classes: Optional[int]
    in_channels: Optional[int]
    image_size: Optional[int]
    train_size: Optional[int]
    default_val_size: Optional[int]


@dataclass
class Splits:
    """Train / validation / test tensors on the device, ready for :func:`batches`.

    ``*_x`` are uint8 ``[N, C, H, W]`` as stored (a grey set stays one channel even with
    ``data.channels=3``: :class:`Preprocess` repeats it), ``*_y`` int64. ``mean``/``std``,
    ``in_channels`` and ``image_size`` describe what the model sees, i.e. after
    ``data.channels`` and ``data.resize``. ``image_size`` is an int for square images,
    else ``(height, width)``. ``train_index``/``val_index`` (CPU) are the positions in
    the official training set that went into each split, in split order.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    in_channels: int
    image_size: Union[int, tuple[int, int]]
    source: str
    name: str = ""
    train_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    val_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        s = self.image_size
        h, w = (s, s) if isinstance(s, int) else s
        return (self.in_channels, h, w)


# --------------------------------------------------------------------------- static facts

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_INFO = {
    "mnist": DatasetInfo(10, 1, 28, 60_000, 10_000),
    "fashion_mnist": DatasetInfo(10, 1, 28, 60_000, 10_000),
    "cifar10": DatasetInfo(10, 3, 32, 50_000, 5_000),
    "imagefolder": DatasetInfo(None, None, None, None, None),
}

# The four IDX files of MNIST and Fashion-MNIST, and the MD5s of their uncompressed
# official contents (not in torchvision, which checks the .gz files).
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CACHE_VERSION = 1
_CACHE_DIRNAME = ".cnnlab-cache"
_ROOT_HINT = "(the data root is data.root, else $CNNLAB_DATA, else ~/.cache/cnnlab)"


def dataset_info(name: str) -> DatasetInfo:
    """Sizes and defaults of a registered data set, without touching any file."""
    DATASETS.get(name)  # unknown names raise UnknownName listing the choices
    return _INFO.get(name, DatasetInfo(None, None, None, None, None))


def resolve_root(data_cfg: Any = None) -> Path:
    """The data root: ``data.root``, else ``$CNNLAB_DATA``, else ``~/.cache/cnnlab``."""
    root = getattr(data_cfg, "root", None) if data_cfg is not None else None
    if root is None and isinstance(data_cfg, dict):
        root = data_cfg.get("root")
    if root:
        return Path(root).expanduser()
    env = os.environ.get("CNNLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cnnlab"


def _as_cfg(data_cfg: Any):
    from cnnlab.config import DataConfig  # config imports this module lazily; avoid a cycle

    if data_cfg is None:
        return DataConfig()
    if isinstance(data_cfg, dict):
        return DataConfig.model_validate(data_cfg)
    return data_cfg


# --------------------------------------------------------------------------- small file helpers


def _read_bytes(path: Path) -> np.ndarray:
    """A file's bytes as a writable uint8 array, gunzipping ``.gz`` files."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return np.frombuffer(bytearray(f.read()), dtype=np.uint8)
        return np.fromfile(path, dtype=np.uint8)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} could not be read ({e}); replace it with an intact copy.") from None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _try_download(fn: Callable[[], Any], made: list[Path]) -> Optional[str]:
    """Run a torchvision download; None on success, else a one-line reason. Of the
    folders in ``made`` (outermost first), those the attempt created and left empty
    are removed again, so a failed download leaves nothing behind."""
    existed = {p: p.exists() for p in made}
    try:
        fn()
        return None
    except Exception as e:  # urllib errors, RuntimeError, OSError...: all mean "no data"
        reason = _short(e)
    for p in reversed(made):
        if not existed[p] and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return reason


# --------------------------------------------------------------------------- MNIST and Fashion-MNIST


def _find_idx(raw_dir: Path, name: str) -> Optional[Path]:
    for candidate in (raw_dir / name, raw_dir / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _parse_idx(path: Path, images: bool) -> np.ndarray:
    """Parse one IDX file: [N, H, W] uint8 for images, [N] for labels."""
    data = _read_bytes(path)
    header = 16 if images else 8
    what = "image" if images else "label"
    expected_magic = _IDX_IMAGES_MAGIC if images else _IDX_LABELS_MAGIC
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


def _load_idx_set(
    root: Path, download: bool, *, folder: str, title: str, classes: list[str], mean: float, std: float,
    tv_class: str,
) -> RawData:
    raw_dir = root / folder / "raw"
    paths = {name: _find_idx(raw_dir, name) for name in _IDX_FILES}
    missing = [n for n, p in paths.items() if p is None]
    note = "data.download is false, so no download was tried."
    if missing and download:
        import torchvision.datasets as tvd

        reason = _try_download(
            lambda: getattr(tvd, tv_class)(str(root), train=False, download=True), [root, root / folder, raw_dir]
        )
        paths = {name: _find_idx(raw_dir, name) for name in _IDX_FILES}
        missing = [n for n, p in paths.items() if p is None]
        note = f"torchvision's download failed: {reason}." if reason else "the download did not produce them."
    if missing:
        raise DataError(
            f"{title} not found: {', '.join(missing)} missing from {raw_dir} {_ROOT_HINT}; {note} "
            f"To provide it, put the four uncompressed IDX files ({', '.join(_IDX_FILES)}) or their official .gz "
            f"files in {raw_dir}, or point data.root or CNNLAB_DATA at a folder that holds {folder}/raw/, "
            f"or run with data.download=true where the internet can be reached."
        )
    xs = {n: _parse_idx(p, images="images" in n) for n, p in paths.items()}  # type: ignore[arg-type]
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
    return RawData(
        out["train"][0], out["train"][1], out["test"][0], out["test"][1], list(classes), (mean,), (std,),
        source=f"official IDX files at {raw_dir}",
    )


@DATASETS.register("mnist")
def load_mnist(root: Path, download: bool = False) -> RawData:
    """MNIST from ``<root>/MNIST/raw`` (torchvision's layout)."""
    return _load_idx_set(
        Path(root), download, folder="MNIST", title="MNIST", classes=MNIST_CLASSES,
        mean=0.1307, std=0.3081, tv_class="MNIST",
    )  # fmt: skip


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: Path, download: bool = False) -> RawData:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw`` (torchvision's layout)."""
    return _load_idx_set(
        Path(root), download, folder="FashionMNIST", title="Fashion-MNIST", classes=FASHION_CLASSES,
        mean=0.2860, std=0.3530, tv_class="FashionMNIST",
    )  # fmt: skip


# --------------------------------------------------------------------------- image folders


@dataclass
class _Tree:
    folder: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split -> [(path, class index)]
    fingerprint: str
    kinds: set[str]  # "PNG" and/or "JPEG"


def _scan_tree(folder: Path, what: str) -> _Tree:
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
                (e for e in os.scandir(folder / split / c) if e.name.lower().endswith(_IMAGE_SUFFIXES) and e.is_file()),
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
    return _Tree(folder, classes, files, h.hexdigest(), kinds)


def _image_error(path: Union[str, Path], e: BaseException) -> DataError:
    return DataError(f"{path} could not be decoded as a PNG or JPEG image ({_short(e, 160)}); replace or remove it.")


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


def _decode_all(paths: list[str]) -> list[torch.Tensor]:
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


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images on the 0..1 scale,
    from a 256-bin histogram per channel (far cheaper than widening every pixel)."""
    c = x.shape[1]
    if x.numel() == 0:
        return (0.0,) * c, (1.0,) * c
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for ch in range(c):
        hist = torch.bincount(x[:, ch].reshape(-1), minlength=256).double()
        n = hist.sum()
        m = (hist * values).sum() / n
        var = ((hist * values * values).sum() / n - m * m).clamp(min=0)
        mean.append(float(m) / 255)
        s = float(var.sqrt()) / 255
        std.append(s if s > 0 else 1.0)  # a constant channel: avoid dividing by zero later
    return tuple(mean), tuple(std)


def _cache_dirs(root: Path) -> list[Path]:
    """Where decoded caches may live: under the data root if it is writable, then
    ~/.cache/cnnlab (for read-only roots such as a shared data folder)."""
    home = Path.home() / ".cache" / "cnnlab" / _CACHE_DIRNAME
    primary = root / _CACHE_DIRNAME
    return [primary, home] if primary != home else [primary]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cache_stem(label: str, folder: Path) -> str:
    # The folder's absolute path is part of the name so one fallback directory can
    # serve many folders; the fingerprint follows it.
    where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:10]
    return f"{label}-{where}"


def _load_cache(path: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or from another torch: decode again
        return None
    if not isinstance(blob, dict) or blob.get("version") != _CACHE_VERSION or blob.get("fingerprint") != fingerprint:
        return None
    return blob


def _save_atomic(blob: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename over the target,
    so a reader never sees half a cache and a crash leaves none."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name, dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a cache may be shared
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_image_tree(folder: Path, label: str, cache_root: Path) -> tuple[dict[str, Any], _Tree, Optional[Path], bool]:
    """Decode (or load from cache) an image tree: returns the tensors, the scan,
    the cache file and whether it came from the cache."""
    tree = _scan_tree(folder, label)
    stem = _cache_stem(label, folder)
    name = f"{stem}-{tree.fingerprint[:16]}.pt"
    for d in _cache_dirs(cache_root):
        if (d / name).is_file():
            blob = _load_cache(d / name, tree.fingerprint)
            if blob is not None:
                return blob, tree, d / name, True

    decoded = {s: _decode_all([p for p, _ in tree.files[s]]) for s in ("train", "test")}
    channels = max(img.shape[0] for s in decoded for img in decoded[s])  # any colour image makes it RGB
    blob: dict[str, Any] = {"version": _CACHE_VERSION, "fingerprint": tree.fingerprint, "classes": tree.classes}
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
    blob["mean"], blob["std"] = _channel_stats(blob["train_x"])

    saved: Optional[Path] = None
    for d in _cache_dirs(cache_root):
        try:
            if not _writable(_nearest_existing(d)):
                continue
            d.mkdir(parents=True, exist_ok=True)
            _save_atomic(blob, d / name)
        except OSError:
            continue
        saved = d / name
        for old in d.glob(f"{stem}-*.pt"):  # caches of earlier states of this folder
            if old != saved:
                old.unlink(missing_ok=True)
        break
    return blob, tree, saved, False


def _kinds_text(kinds: set[str]) -> str:
    return "JPEG, lossy" if kinds == {"JPEG"} else ("PNG" if kinds == {"PNG"} else "PNG and JPEG")


@DATASETS.register("imagefolder")
def load_imagefolder(root: Path, download: bool = False) -> RawData:
    """Any ``train/<class>/*`` + ``test/<class>/*`` tree of PNG/JPEG images at ``root``.
    Classes are the sorted folder names of train/; mean/std come from the training images."""
    root = Path(root)
    blob, tree, cache, hit = _read_image_tree(root, "imagefolder", root)
    return RawData(
        blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], list(blob["classes"]),
        tuple(blob["mean"]), tuple(blob["std"]), source=f"image folder ({_kinds_text(tree.kinds)}) at {root}",
        cache_path=cache, from_cache=hit,
    )  # fmt: skip


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cifar_export_candidates(root: Path) -> list[Path]:
    return [root / "cifar10-jpg", root / "cifar10", root]


def _is_cifar_export(folder: Path) -> bool:
    train = folder / "train"
    return (folder / "test").is_dir() and train.is_dir() and all((train / c).is_dir() for c in CIFAR10_CLASSES)


def _cifar_batch_files() -> list:
    """(file name, MD5) of the seven official CIFAR-10 python batch files, from torchvision's own list."""
    from torchvision.datasets import CIFAR10

    return CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]


def _cifar_bad_files(folder: Path, error: BaseException) -> str:
    """Which batch files are missing or fail their MD5 sum, for the error message."""
    from torchvision.datasets.utils import check_integrity

    missing, corrupt = [], []
    for name, md5 in _cifar_batch_files():
        path = folder / name
        if not path.exists():
            missing.append(name)
        elif not check_integrity(str(path), md5):
            corrupt.append(name)
    parts = ([f"{', '.join(corrupt)} fail{'s' if len(corrupt) == 1 else ''} the MD5 check"] if corrupt else []) + \
            ([f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"] if missing else [])
    return "; ".join(parts) or f"torchvision could not read them ({_short(error, 160)})"


def _cifar_official(root: Path) -> RawData:
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    parts = {}
    for split in ("train", "test"):
        try:
            ds = CIFAR10(str(root), train=split == "train", download=False)
        except Exception as e:  # torchvision: "Dataset not found or corrupted"
            raise DataError(
                f"the CIFAR-10 python batches in {folder} cannot be used: {_cifar_bad_files(folder, e)}. "
                f"Delete that folder and run with data.download=true, or put an intact copy of "
                f"cifar-10-batches-py (from cifar-10-python.tar.gz) there."
            ) from None
        parts[split] = (
            torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(ds.targets, dtype=torch.int64),
        )
    return RawData(
        parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], list(CIFAR10_CLASSES),
        _CIFAR_MEAN, _CIFAR_STD, source=f"official python batches at {folder}",
    )  # fmt: skip


def _cifar_export(folder: Path, cache_root: Path) -> RawData:
    blob, tree, cache, hit = _read_image_tree(folder, "cifar10", cache_root)
    if list(blob["classes"]) != CIFAR10_CLASSES:
        raise DataError(
            f"{folder} is not a CIFAR-10 export: its train/ classes are {', '.join(blob['classes'])}, expected "
            f"exactly {', '.join(CIFAR10_CLASSES)}. Use data.name=imagefolder with data.root={folder} for other sets."
        )
    shape = tuple(blob["train_x"].shape[1:])
    if shape != (3, 32, 32):
        raise DataError(
            f"{folder} is not a CIFAR-10 export: its images are {shape[1]}x{shape[2]} with {shape[0]} channel(s), "
            f"expected 32x32 RGB. Use data.name=imagefolder with data.root={folder} for other image folders."
        )
    return RawData(
        blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], list(CIFAR10_CLASSES),
        _CIFAR_MEAN, _CIFAR_STD, source=f"image-folder export ({_kinds_text(tree.kinds)}) at {folder}",
        cache_path=cache, from_cache=hit,
    )  # fmt: skip


@DATASETS.register("cifar10")
def load_cifar10(root: Path, download: bool = False) -> RawData:
    """CIFAR-10 from the official python batches (``<root>/cifar-10-batches-py``) or,
    failing those, an image-folder export (``<root>/cifar10-jpg`` or ``<root>/cifar10``
    or ``<root>`` itself holding ``train/<class>/`` and ``test/<class>/``)."""
    root = Path(root)
    batches = root / "cifar-10-batches-py"
    if batches.is_dir():
        return _cifar_official(root)
    for folder in _cifar_export_candidates(root):
        if _is_cifar_export(folder):
            return _cifar_export(folder, root)
    note = "data.download is false, so no download was tried."
    if download:
        from torchvision.datasets import CIFAR10

        reason = _try_download(lambda: CIFAR10(str(root), train=True, download=True), [root])
        if reason is None and batches.is_dir():
            return _cifar_official(root)
        note = f"torchvision's download failed: {reason}."
    raise DataError(
        f"CIFAR-10 not found in {root} {_ROOT_HINT}: it holds neither the official python batches "
        f"({batches}) nor an image-folder export ({root / 'cifar10-jpg'} or {root / 'cifar10'} with "
        f"train/<class>/ and test/<class>/ for the ten classes); {note} To provide it, extract "
        f"cifar-10-python.tar.gz into {root}, or put an image-folder export there, or point data.root or "
        f"CNNLAB_DATA at a folder that holds one, or run with data.download=true where the internet can be reached."
    )


# --------------------------------------------------------------------------- splits


def load_raw(data_cfg: Any = None) -> RawData:
    """The whole data set named by ``data.name``, on the CPU."""
    cfg = _as_cfg(data_cfg)
    return DATASETS.get(cfg.name)(resolve_root(cfg), cfg.download)


def _to_grey(x: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> one-channel uint8 luma (rounded), done in chunks to bound memory."""
    out = torch.empty(x.shape[0], 1, *x.shape[2:], dtype=torch.uint8)
    w = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    for i in range(0, len(x), 4096):
        out[i : i + 4096] = (x[i : i + 4096].float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_splits(data_cfg: Any = None, device: Union[str, torch.device] = "cpu") -> Splits:
    """Load ``data.name`` and split the official training set into train and
    validation with a permutation fixed by ``data.split_seed``; the official test
    set is kept as it is. ``data.train_limit`` keeps the first N images of the
    (shuffled) train split. All tensors are moved to ``device`` once, as uint8."""
    cfg = _as_cfg(data_cfg)
    raw = load_raw(cfg)
    n = len(raw.train_x)
    info = dataset_info(cfg.name)
    val_size = cfg.val_size
    if val_size is None:
        val_size = info.default_val_size if info.default_val_size is not None else n // 10
    if val_size >= n:
        raise DataError(
            f"data.val_size={val_size} leaves no training images: {cfg.name} has {n} training images "
            f"({raw.source}). Set data.val_size below {n}."
        )
    # The permutation is drawn on the CPU with its own generator so the split never
    # depends on the device, the run seed or anything drawn before.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_index = perm[:val_size].sort().values
    train_index = perm[val_size:]
    if cfg.train_limit is not None:
        train_index = train_index[: cfg.train_limit]

    train_x, test_x = raw.train_x, raw.test_x
    mean, std = raw.mean, raw.std
    native = train_x.shape[1]
    channels = cfg.channels or native
    if channels == 1 and native == 3:
        # Converted once here rather than per batch; statistics of the grey images.
        train_x, test_x = _to_grey(train_x), _to_grey(test_x)
        mean, std = _channel_stats(train_x)
    elif channels == 3 and native == 1:
        mean, std = mean * 3, std * 3  # Preprocess repeats the channel
    elif channels != native:
        raise DataError(f"data.channels={channels} cannot be made from {native}-channel images")

    h, w = train_x.shape[-2:]
    image_size: Union[int, tuple[int, int]] = cfg.resize if cfg.resize else (h if h == w else (h, w))
    dev = torch.device(device)
    return Splits(
        train_x=train_x[train_index].to(dev),
        train_y=raw.train_y[train_index].to(dev),
        val_x=train_x[val_index].to(dev),
        val_y=raw.train_y[val_index].to(dev),
        test_x=test_x.to(dev),
        test_y=raw.test_y.to(dev),
        classes=list(raw.classes),
        mean=tuple(mean),
        std=tuple(std),
        num_classes=len(raw.classes),
        in_channels=channels,
        image_size=image_size,
        source=raw.source,
        name=cfg.name,
        train_index=train_index,
        val_index=val_index,
    )


def batches(
    n: int,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    shuffle: bool = True,
    drop_last: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> Iterator[torch.Tensor]:
    """Index tensors covering 0..n-1 once: slices of one ``randperm`` (drawn with
    ``generator``, on its device) when shuffling, else in order. The last short batch
    is kept unless ``drop_last``. ``device`` moves the whole permutation once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device)
    else:
        order = torch.arange(n)
    if device is not None:
        order = order.to(device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


# --------------------------------------------------------------------------- preprocessing


class Preprocess:
    """Turns a uint8 batch into the model's float32 input, on the batch's device.

    Training (``train=True``): random crop with padding, horizontal flip and colour
    jitter as set in ``data.augment``; then, for every split: resize to
    ``data.resize``, grey -> 3 channel repeat for ``data.channels=3``, and
    normalisation by the split's mean/std. Call as ``pre(x_uint8, generator)``;
    the generator is only needed when something random is switched on.
    """

    def __init__(self, splits: Splits, data_cfg: Any = None, train: bool = False):
        cfg = _as_cfg(data_cfg)
        self.train = train
        self.aug = cfg.augment
        self.resize = cfg.resize
        self.resize_mode = cfg.resize_mode
        self.in_channels = splits.in_channels
        stored = splits.train_x.shape[1]
        self.repeat = stored == 1 and splits.in_channels == 3
        h, w = splits.train_x.shape[-2:]
        a = self.aug
        self.crop = train and a.crop_padding > 0
        self.flip = train and a.flip
        self.jitter = train and any(v > 0 for v in (a.brightness, a.contrast, a.saturation, a.hue))
        if self.crop and a.crop_mode == "reflect" and a.crop_padding >= min(h, w):
            from cnnlab.config import ConfigError

            raise ConfigError(
                f"data.augment.crop_padding={a.crop_padding} with crop_mode=reflect must be smaller than the "
                f"image ({h}x{w}); use a smaller padding or crop_mode=zero"
            )
        dev = splits.train_x.device
        mean = torch.tensor(splits.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        std = torch.tensor(splits.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
        # Without jitter the 1/255 is folded into the normalisation (one pass less).
        scale = 1.0 if self.jitter else 255.0
        self._mul = 1.0 / (std * scale)
        self._add = -mean / std
        self.random = self.crop or self.flip or self.jitter

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.random and generator is None:
            raise ValueError("training augmentation is on: pass a torch.Generator for reproducible randomness")
        a = self.aug
        if self.crop:
            x = augment.random_crop(x, a.crop_padding, generator, a.crop_mode)
        if self.flip:
            x = augment.random_hflip(x, generator)
        x = x.float()
        if self.jitter:
            x = augment.color_jitter(x.div_(255), generator, a.brightness, a.contrast, a.saturation, a.hue)
        if self.resize:
            x = augment.resize(x, self.resize, self.resize_mode)
        if self.repeat:
            x = augment.repeat_channels(x, 3)
        return torch.addcmul(self._add, x, self._mul)


# --------------------------------------------------------------------------- data list / check


def _file_entry(path: Path, expected_md5: Optional[str], check: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "md5": None, "md5_ok": None}
    if check and expected_md5:
        entry["md5"] = _md5(path)
        entry["md5_ok"] = entry["md5"] == expected_md5
    entry["expected_md5"] = expected_md5
    return entry


def _describe_idx(root: Path, name: str, folder: str, check: bool) -> dict[str, Any]:
    raw_dir = root / folder / "raw"
    files = []
    missing = []
    for fname in _IDX_FILES:
        p = _find_idx(raw_dir, fname)
        if p is None:
            missing.append(fname)
            continue
        if p.suffix == ".gz":  # torchvision knows the MD5s of the official .gz files
            import torchvision.datasets as tvd

            expected = dict(getattr(tvd, folder).resources).get(p.name)
        else:
            expected = _IDX_MD5[folder][fname]
        files.append(_file_entry(p, expected, check))
    bad = [Path(f["path"]).name for f in files if f["md5_ok"] is False]
    ok = not missing and not bad
    if missing:
        message = f"missing {', '.join(missing)} in {raw_dir}"
    elif bad:
        message = f"MD5 mismatch (corrupt or not the official file): {', '.join(bad)}"
    else:
        message = "official files, MD5 checked" if check else "official files (MD5 not checked)"
    return {
        "name": name, "present": not missing, "ok": ok, "location": str(raw_dir),
        "source": "official IDX files", "files": files, "message": message,
    }  # fmt: skip


def _count_tree(folder: Path) -> dict[str, int]:
    counts = {}
    for split in ("train", "test"):
        n = 0
        if (folder / split).is_dir():
            for c in os.scandir(folder / split):
                if c.is_dir():
                    n += sum(1 for e in os.scandir(c.path) if e.name.lower().endswith(_IMAGE_SUFFIXES))
        counts[split] = n
    return counts


def _describe_cifar(root: Path, check: bool) -> dict[str, Any]:
    batches = root / "cifar-10-batches-py"
    base = {"name": "cifar10", "files": []}
    if batches.is_dir():
        files = []
        for fname, md5 in _cifar_batch_files():
            p = batches / fname
            if p.is_file():
                files.append(_file_entry(p, md5, check))
        bad = [Path(f["path"]).name for f in files if f["md5_ok"] is False]
        complete = len(files) == 7
        return {
            **base, "present": complete, "ok": complete and not bad, "location": str(batches),
            "source": "official python batches", "files": files,
            "message": ("incomplete: some batch files are missing" if not complete else
                        f"MD5 mismatch: {', '.join(bad)}" if bad else
                        "official files, MD5 checked" if check else "official files (MD5 not checked)"),
        }  # fmt: skip
    for folder in _cifar_export_candidates(root):
        if _is_cifar_export(folder):
            counts = _count_tree(folder)
            return {
                **base, "present": True, "ok": counts["train"] > 0 and counts["test"] > 0, "location": str(folder),
                "source": "image-folder export (not the official bytes)", "images": counts,
                "message": f"{counts['train']} training and {counts['test']} test images (not checksummed)",
            }  # fmt: skip
    return {
        **base, "present": False, "ok": False, "location": str(root),
        "source": None, "message": f"neither {batches} nor an image-folder export ({root / 'cifar10-jpg'}) found",
    }  # fmt: skip


def describe_data(root: Union[str, Path, None] = None, check: bool = True) -> list[dict[str, Any]]:
    """What each data set looks like under ``root`` (default: :func:`resolve_root`),
    for ``cnnlab data list|check``. One dict per data set with ``name``, ``present``,
    ``ok`` (present and every check passed), ``location``, ``source``, ``files`` (each
    ``path``, ``bytes``, ``md5``, ``expected_md5``, ``md5_ok``; MD5s only when
    ``check``), ``images`` (per split, for image folders) and a one-line ``message``.
    Nothing is decoded."""
    root = resolve_root(None) if root is None else Path(root).expanduser()
    out = [
        _describe_idx(root, "mnist", "MNIST", check),
        _describe_idx(root, "fashion_mnist", "FashionMNIST", check),
        _describe_cifar(root, check),
    ]
    if (root / "train").is_dir() and (root / "test").is_dir():
        counts = _count_tree(root)
        out.append({
            "name": "imagefolder", "present": True, "ok": counts["train"] > 0 and counts["test"] > 0,
            "location": str(root), "source": "image folder", "files": [], "images": counts,
            "message": f"{counts['train']} training and {counts['test']} test images",
        })  # fmt: skip
    else:
        out.append({
            "name": "imagefolder", "present": False, "ok": False, "location": str(root), "source": None,
            "files": [], "message": "not a train/<class>/ + test/<class>/ tree (set data.root to one to use it)",
        })  # fmt: skip
    return out
