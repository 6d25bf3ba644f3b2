"""Train / validation / test splits on the device.

The official test set is kept as it is. The official training set is split into
train and validation by one permutation drawn from ``data.split_seed`` on the CPU
with its own generator, so the split never depends on the device, the run seed or
anything drawn before; ``data.train_limit`` then keeps the first N images of the
(shuffled) train split, leaving validation where it was. An image folder with a
``val/`` folder keeps it as validation. A flat image folder (``root/<class>/``) is
split into train / validation / test here, stratified by class (:func:`stratified_split`),
or by the file lists a run saved (``splits.json``, :meth:`Splits.record`), so eval and
resume see the same split. ``data.channels`` turns RGB into grey here, once. All
tensors move to the device in one go, as uint8, unless :mod:`cnnlab.data.placement`
finds they do not fit there (then they stay in pinned host memory or memory-mapped
from the cache on disk, and batches are copied over).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from cnnlab.data import placement
from cnnlab.data.common import DataError, RawData, channel_stats, resolve_root, to_grey  # noqa: F401 (to_grey)
from cnnlab.data.placement import HostImages
from cnnlab.data.sources import dataset_info
from cnnlab.registry import DATASETS

if TYPE_CHECKING:
    from cnnlab.config import DataConfig

# What a missing setting means when a dict or None stands for a DataConfig (tests check
# that these are DataConfig's own defaults).
DEFAULTS: dict[str, Any] = {
    "name": "mnist", "root": None, "download": True, "val_size": None, "split_seed": 0, "train_limit": None,
    "resize": None, "channels": None, "test_size": None, "resize_mode": "bilinear", "resize_policy": "stretch",
    "skip_bad_images": False, "allow_modified": False, "max_memory": "auto",
}  # fmt: skip

DataSettings = Union["DataConfig", dict, None]


def setting(data_cfg: DataSettings, key: str) -> Any:
    """One ``data.*`` setting of a DataConfig, a dict of them, or None (the defaults)."""
    if data_cfg is None:
        return DEFAULTS[key]
    if isinstance(data_cfg, dict):
        return data_cfg.get(key, DEFAULTS[key])
    return getattr(data_cfg, key)


@dataclass
class Splits:
    """Train / validation / test tensors on the device, ready for :mod:`cnnlab.data.batches`
    (or, when they do not fit there, :class:`~cnnlab.data.placement.HostImages` that hand out
    device batches the same way, see ``placement``).

    ``*_x`` are uint8 ``[N, C, H, W]`` as stored (a grey set stays one channel even with
    ``data.channels=3``: :class:`~cnnlab.augment.Preprocess` repeats it), ``*_y`` int64.
    ``mean``/``std``, ``in_channels`` and ``image_size`` describe what the model sees, i.e.
    after ``data.channels`` and ``data.resize``. ``image_size`` is an int for square
    images, else ``(height, width)``. ``train_index``/``val_index`` (CPU) are the
    positions in the official training set that went into each split, in split order.
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
    # how images become the model's input (see preprocessing()): data.resize as (height, width) or
    # None, the policy, the interpolation, and whether the resize happened when decoding (image folders)
    resize: Optional[tuple[int, int]] = None
    resize_policy: str = "stretch"
    interpolation: str = "bilinear"
    resized_on_decode: bool = False
    # image folders: the root, the files of each split ([path relative to root, class index], in
    # tensor order), unreadable images skipped [(path, why)], non-image files skipped
    root: Optional[str] = None
    files: Optional[dict[str, list[tuple[str, int]]]] = None
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # where the images are kept (cnnlab.data.placement): "device", "pinned host memory" or "streamed from <file>"
    placement: str = "device"

    @property
    def placement_note(self) -> str:
        """The placement for the "data:" line: nothing when on the device, else ", <placement>"."""
        return "" if self.placement == "device" else f", {self.placement}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        s = self.image_size
        h, w = (s, s) if isinstance(s, int) else s
        return (self.in_channels, h, w)

    def preprocessing(self) -> dict[str, Any]:
        """Everything needed to turn a new image into this model's input, as plain JSON values
        (for checkpoints, summary.json, predict and export): classes, input shape (C, H, W),
        channels, per-channel mean/std (0..1 scale, applied after scaling pixels to 0..1),
        and the resize (``[height, width]`` or None), its policy and interpolation."""
        return {
            "classes": list(self.classes), "input_shape": list(self.input_shape), "channels": self.in_channels,
            "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
            "resize": list(self.resize) if self.resize else None, "resize_policy": self.resize_policy,
            "interpolation": self.interpolation, "resized_on_decode": self.resized_on_decode,
        }  # fmt: skip

    def record(self) -> Optional[dict[str, Any]]:
        """What ``splits.json`` in a run folder holds, for image folders (None for the built-in
        sets, whose split ``data.split_seed`` fixes): the root, classes, each split's files
        ``[path relative to root, class index]``, unreadable images skipped ``[path, why]``, the
        number of non-image files skipped, and :meth:`preprocessing`. ``load_splits(...,
        saved=record)`` rebuilds the same split from it."""
        if self.files is None:
            return None
        return {
            "version": 1, "root": self.root, "classes": list(self.classes),
            "files": {s: [[p, c] for p, c in v] for s, v in self.files.items()},
            "bad_images": [[p, why] for p, why in self.bad_images], "skipped_files": len(self.skipped),
            "preprocessing": self.preprocessing(),
        }  # fmt: skip


def load_raw(data_cfg: DataSettings = None) -> RawData:
    """The whole data set named by ``data.name``, on the CPU."""
    source = DATASETS.get(setting(data_cfg, "name"))
    options = {k: setting(data_cfg, k) for k in source.options}
    return source.load(resolve_root(data_cfg), setting(data_cfg, "download"), **options)


def count_of(size: Union[int, float], n: int) -> int:
    """``data.val_size`` / ``data.test_size`` as a number of images out of ``n``: a fraction
    in (0, 1) is rounded (at least 1), a count is itself."""
    return max(1, round(size * n)) if isinstance(size, float) else int(size)


def stratified_split(labels: torch.Tensor, n_test: int, n_val: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) indices: each class gives test and validation images in proportion to
    its size (largest remainder, so the totals are exact), drawn by one permutation per class
    from a generator seeded with ``seed``; every class keeps at least one training image. Each
    index list is sorted (file order)."""
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    n = len(labels)

    def shares(total: int, room: list[int]) -> list[int]:
        exact = [total * c / n for c in counts]
        got = [min(int(e), r) for e, r in zip(exact, room)]
        order = sorted(range(num_classes), key=lambda k: (-(exact[k] - int(exact[k])), k))
        while sum(got) < total and any(g < r for g, r in zip(got, room)):
            for k in order:
                if sum(got) < total and got[k] < room[k]:
                    got[k] += 1
        return got

    test = shares(n_test, [c - 1 for c in counts])
    val = shares(n_val, [c - 1 - t for c, t in zip(counts, test)])
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for k in range(num_classes):
        members = (labels == k).nonzero().flatten()
        perm = members[torch.randperm(len(members), generator=g)]
        parts["test"].append(perm[: test[k]])
        parts["val"].append(perm[test[k] : test[k] + val[k]])
        parts["train"].append(perm[test[k] + val[k] :])
    return tuple(torch.cat(parts[s]).sort().values for s in ("train", "val", "test"))  # type: ignore[return-value]


def _split_flat(raw: RawData, data_cfg: DataSettings, saved: Optional[dict]) -> dict[str, torch.Tensor]:
    """Indices into a flat folder's images for train / val / test: from a run's saved file
    lists when given, else a stratified split by data.test_size / data.val_size / split_seed."""
    paths = raw.files["train"] if raw.files else []
    if saved is not None:
        where = {p: i for i, p in enumerate(paths)}
        out, missing = {}, []
        for s in ("train", "val", "test"):
            listed = [p for p, _ in saved["files"].get(s, [])]
            missing += [p for p in listed if p not in where]
            out[s] = torch.tensor([where[p] for p in listed if p in where], dtype=torch.int64)
        if missing:
            raise DataError(
                f"the split this run saved (splits.json) lists {len(missing)} file(s) no longer in {raw.root} "
                f"(e.g. {', '.join(missing[:3])}); restore them, or train a new run on the folder as it is now.")
        return out
    n = len(paths)
    counts = torch.bincount(raw.train_y, minlength=len(raw.classes))
    for k, c in enumerate(counts.tolist()):
        if c < 3:
            raise DataError(f"{raw.root / raw.classes[k]} has {c} usable image(s): a flat folder is split into "
                            f"train, validation and test, so every class needs at least 3. Add images to it.")
    test_size, val_size = setting(data_cfg, "test_size"), setting(data_cfg, "val_size")
    n_test = count_of(0.2 if test_size is None else test_size, n)
    n_val = count_of(0.1 if val_size is None else val_size, n) if val_size != 0 else 0
    if n_test + n_val > n - len(counts):
        raise DataError(
            f"data.test_size and data.val_size ask for {n_test} + {n_val} of the {n} images in {raw.root}, leaving "
            f"too few for training (each of the {len(counts)} classes needs one); make them smaller.")
    train, val, test = stratified_split(raw.train_y, n_test, n_val, setting(data_cfg, "split_seed"))
    limit = setting(data_cfg, "train_limit")
    if limit is not None:  # a seeded shuffle of the train split, then its first N (as for the built-in sets)
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(setting(data_cfg, "split_seed")))][:limit]
    return {"train": train, "val": val, "test": test}


def split_indices(
    n: int, val_size: int, split_seed: int, train_limit: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_index, val_index) into ``n`` training images: validation is the first
    ``val_size`` of one seeded permutation (sorted), train the rest in permutation
    order, cut to ``train_limit``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_index = perm[:val_size].sort().values
    train_index = perm[val_size:]
    if train_limit is not None:
        train_index = train_index[:train_limit]
    return train_index, val_index


def load_splits(data_cfg: DataSettings = None, device: Union[str, torch.device] = "cpu",
                saved: Optional[dict] = None) -> Splits:
    """Load ``data.name`` and split it: the official training set into train and validation
    with a permutation fixed by ``data.split_seed`` (an image folder's val/ is kept as
    validation), the official test set as it is; a flat image folder into all three,
    stratified by class, or as ``saved`` (a run's ``splits.json``, see :meth:`Splits.record`)
    says. ``data.train_limit`` keeps the first N images of the (shuffled) train split. The
    splits, uint8, go where :mod:`cnnlab.data.placement` decides from their size, ``data.max_memory``
    and the free memory: to ``device`` in one go, or kept on the host (pinned, or memory-mapped
    from the cache on disk) as :class:`~cnnlab.data.placement.HostImages` handing out device batches."""
    name = setting(data_cfg, "name")
    raw = load_raw(data_cfg)
    seed, limit = setting(data_cfg, "split_seed"), setting(data_cfg, "train_limit")
    val_size = setting(data_cfg, "val_size")
    if setting(data_cfg, "test_size") is not None and raw.layout != "flat":
        raise DataError(f"data.test_size is set, but {name} ({raw.source}) has its own test images; data.test_size "
                        f"splits a flat root/<class>/ image folder only. Remove it.")
    files = None
    # each split as (the RawData tensor holding its images, their positions in it; None: all, in order):
    # nothing is gathered until the placement is known
    parts: dict[str, tuple[str, Optional[torch.Tensor]]]
    if raw.layout == "flat":
        idx = _split_flat(raw, data_cfg, saved)
        train_index, val_index = idx["train"], idx["val"]
        parts = {s: ("train_x", i) for s, i in idx.items()}
        y_all = raw.train_y
        ys = {s: y_all[i] for s, i in idx.items()}
        paths = raw.files["train"] if raw.files else []
        files = {s: [(paths[j], int(y_all[j])) for j in i.tolist()] for s, i in idx.items()}
        mean, std = None, None  # of the train split, below
    else:
        n = len(raw.train_x)
        if raw.val_x is not None:
            if val_size is not None:
                raise DataError(f"data.val_size is set, but {raw.root}/val/ holds the validation images; remove "
                                f"data.val_size or the val/ folder.")
            val_index = torch.empty(0, dtype=torch.int64)
            train_index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit] if limit \
                else torch.arange(n)
            val_part, val_y = ("val_x", None), raw.val_y
        else:
            if val_size is None:
                default = dataset_info(name).default_val_size
                val_size = default if default is not None else n // 10
            val_size = count_of(val_size, n) if val_size else 0
            if val_size >= n:
                raise DataError(
                    f"data.val_size={val_size} leaves no training images: {name} has {n} training images "
                    f"({raw.source}). Set data.val_size below {n}."
                )
            train_index, val_index = split_indices(n, val_size, seed, limit)
            val_part, val_y = ("train_x", val_index), raw.train_y[val_index]
        parts = {"train": ("train_x", train_index), "val": val_part, "test": ("test_x", None)}
        ys = {"train": raw.train_y[train_index], "val": val_y, "test": raw.test_y}
        mean, std = raw.mean, raw.std
        if raw.files is not None:
            tr = raw.files["train"]
            files = {"train": [(tr[j], int(raw.train_y[j])) for j in train_index.tolist()],
                     "val": ([(tr[j], int(raw.train_y[j])) for j in val_index.tolist()] if raw.val_x is None else
                             list(zip(raw.files.get("val", []), raw.val_y.tolist()))),
                     "test": list(zip(raw.files.get("test", []), raw.test_y.tolist()))}

    native = raw.train_x.shape[1]
    channels = setting(data_cfg, "channels") or native
    if channels != native and not (channels == 3 and native == 1) and not (channels == 1 and native == 3):
        raise DataError(f"data.channels={channels} cannot be made from {native}-channel images")
    grey = channels == 1 and native == 3  # converted once (or per streamed batch), not per training batch
    dev = torch.device(device)
    xs, where = _place(raw, parts, grey, dev, setting(data_cfg, "max_memory"), name)
    if mean is None or grey:  # statistics of the images as stored (a flat folder's train split, grey images)
        mean, std = placement.host_stats(xs["train"]) if isinstance(xs["train"], HostImages) \
            else channel_stats(xs["train"])
    if channels == 3 and native == 1:
        mean, std = tuple(mean) * 3, tuple(std) * 3  # Preprocess repeats the channel

    h, w = raw.train_x.shape[-2:]
    resize = setting(data_cfg, "resize")
    image_size: Union[int, tuple[int, int]] = resize if resize else (h if h == w else (h, w))
    if isinstance(image_size, (list, tuple)):
        image_size = tuple(image_size)  # type: ignore[assignment]
        if image_size[0] == image_size[1]:
            image_size = image_size[0]
    if not isinstance(xs["train"], HostImages):
        xs = {s: x.to(dev) for s, x in xs.items()}
    return Splits(
        train_x=xs["train"], train_y=ys["train"].to(dev),
        val_x=xs["val"], val_y=ys["val"].to(dev),
        test_x=xs["test"], test_y=ys["test"].to(dev),
        classes=list(raw.classes), mean=tuple(mean), std=tuple(std), num_classes=len(raw.classes),
        in_channels=channels, image_size=image_size, source=raw.source, name=name,
        train_index=train_index, val_index=val_index,
        resize=((resize, resize) if isinstance(resize, int) else tuple(resize)) if resize else None,
        resize_policy=setting(data_cfg, "resize_policy"), interpolation=setting(data_cfg, "resize_mode"),
        resized_on_decode=bool(resize) and "resize" in DATASETS.get(name).options,
        root=str(raw.root) if raw.root is not None else None, files=files,
        bad_images=list(raw.bad_images), skipped=list(raw.skipped), placement=where,
    )  # fmt: skip


def _place(raw: RawData, parts: dict[str, tuple[str, Optional[torch.Tensor]]], grey: bool, dev: torch.device,
           max_memory: Union[str, int], name: str) -> tuple[dict[str, Any], str]:
    """Each split's images where they will be kept, and the placement as summary.json says it: CPU
    tensors bound for ``dev`` ("device"), or HostImages ("pinned host memory", "streamed from <file>")."""
    per_image = (1 if grey else raw.train_x.shape[1]) * raw.train_x.shape[2] * raw.train_x.shape[3]
    count = sum(len(getattr(raw, t)) if rows is None else len(rows) for t, rows in parts.values())
    kind = placement.decide(count * per_image, dev, max_memory)  # uint8; the labels are negligible
    if kind == placement.STREAM:
        mapped, path = placement.mapped_images(raw, name)
        return {s: HostImages(mapped[t], rows, dev, grey) for s, (t, rows) in parts.items()}, f"streamed from {path}"
    xs = {}
    for s, (t, rows) in parts.items():
        x = getattr(raw, t)
        # a memory-mapped cache is copied into memory here (gathering copies already)
        x = x[rows] if rows is not None else (x.clone() if raw.mapped and dev.type == "cpu" else x)
        xs[s] = to_grey(x) if grey else x
    if kind == placement.PINNED:
        return {s: HostImages(x.pin_memory(), None, dev) for s, x in xs.items()}, "pinned host memory"
    return xs, "device"
