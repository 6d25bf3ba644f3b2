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

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from cnnlab import runs
from cnnlab.data import placement
from cnnlab.data.common import (DataError, NotRegularFile, RawData, channel_stats, open_regular,  # noqa: F401 (to_grey)
                                resolve_root, short, to_grey)
from cnnlab.data.placement import HostImages
from cnnlab.data.sources import dataset_info
from cnnlab.registry import DATASETS

if TYPE_CHECKING:
    from cnnlab.config.schema import DataConfig

# What a missing setting means when a dict or None stands for a DataConfig (tests check
# that these are DataConfig's own defaults).
DEFAULTS: dict[str, Any] = {
    "name": "mnist", "root": None, "download": True, "val_size": None, "split_seed": 0, "train_limit": None,
    "resize": None, "channels": None, "test_size": None, "resize_mode": "bilinear", "resize_policy": "stretch",
    "skip_bad_images": False, "allow_modified": False, "max_memory": "auto", "verify": "stat",
    "folds": None, "fold": None,
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
    ``data.channels=3``: :class:`~cnnlab.data.augment.Preprocess` repeats it), ``*_y`` int64.
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
    layout: str = "split"  # image folders: "flat" (root/<class>/, split here) or "split" (train/ + test/ folders)

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
        files = {s: [[p, c] for p, c in v] for s, v in self.files.items()}
        return {
            "version": 1, "root": self.root, "classes": list(self.classes), "layout": self.layout,
            "files": files, "files_digest": files_digest(self.classes, files),
            "bad_images": [[p, why] for p, why in self.bad_images], "skipped_files": len(self.skipped),
            "preprocessing": self.preprocessing(),
        }  # fmt: skip


# ----------------------------------------------------------------------------- splits.json, checked on every load

SPLIT_NAMES = ("train", "val", "test")
RECORD_HOW = ("splits.json is the list of files each split of this run used, written by cnnlab when the run "
              "started; restore it from a copy of the run, or train a new run on the folder")


def files_digest(classes: list[str], files: dict[str, list]) -> str:
    """A hash of the classes and each split's file list as ``splits.json`` holds them: an edit shows."""
    text = json.dumps({"classes": list(classes), "files": {s: [[p, int(c)] for p, c in v] for s, v in files.items()}},
                      sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_record(path: Union[str, Path]) -> Optional[dict]:
    """A run's ``splits.json``, checked (:func:`check_record`); None when the run has none (the built-in
    data sets). Anything else than the record cnnlab wrote raises a DataError naming the file."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path) as f:  # a named pipe or a folder there is no record, and is never opened
            record = json.loads(f.read().decode("utf-8"))
    except NotRegularFile as e:
        raise DataError(f"{path} is {e.strerror.split(',')[0]}, not the JSON file cnnlab wrote; {RECORD_HOW}.") from None
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        what = short(e, 160) if isinstance(e, OSError) else f"not valid JSON: {short(e, 160)}"
        raise DataError(f"{path} cannot be read ({what}); {RECORD_HOW}.") from None
    check_record(record, path)
    return record


def save_record(run_dir: Union[str, Path], record: Optional[dict]) -> None:
    """``splits.json`` (each split's files, skipped images, preprocessing) and ``bad_images.txt``
    (one ``path<TAB>why`` line per image skipped by ``data.skip_bad_images``) in a run folder; nothing
    for the built-in data sets, whose splits are fixed (``record`` None)."""
    if record is None:
        return
    runs.write_json(Path(run_dir) / "splits.json", record)
    if record["bad_images"]:
        runs.write_text(Path(run_dir) / "bad_images.txt", "".join(f"{p}\t{why}\n" for p, why in record["bad_images"]))


def saved_record(run_dir: Union[str, Path]) -> Optional[dict]:
    """The ``splits.json`` a run saved, so ``--resume`` and ``cnnlab eval`` see the same images (checked by
    :func:`read_record`: a damaged or edited one is a DataError naming it)."""
    return read_record(Path(run_dir) / "splits.json")


def check_record(record: Any, where: Union[str, Path] = "splits.json") -> None:
    """``record`` has the shape :meth:`Splits.record` gives: an object with ``classes`` (distinct names)
    and ``files`` (per split a list of ``[path relative to data.root, class index]``), the splits
    disjoint, no file listed twice, every path inside data.root, each file in its recorded class's
    folder, a test split that is not empty, and (when recorded) the lists as they were written. Else a
    DataError naming ``where`` and what is wrong."""
    def bad(what: str) -> DataError:
        return DataError(f"{where}: {what}; {RECORD_HOW}.")

    if not isinstance(record, dict):
        raise bad(f"expected a JSON object with classes and files, got {type(record).__name__}")
    classes, files = record.get("classes"), record.get("files")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise bad(f"classes must be a list of at least 2 distinct class names, got {_brief(classes)}")
    if not isinstance(files, dict) or not files or set(files) - set(SPLIT_NAMES):
        raise bad(f"files must be an object with the splits {', '.join(SPLIT_NAMES)} as keys, got {_brief(files)}")
    layout = record.get("layout")
    if layout is None:  # records written before the layout was: a train/ + test/ tree lists train/... paths
        layout = "split" if any(str(e[0]).startswith("train/") for e in files.get("train") or []
                                if isinstance(e, list) and e) else "flat"
    if layout not in ("flat", "split"):
        raise bad(f"layout must be flat or split, got {_brief(layout)}")
    seen: dict[str, str] = {}
    for s, entries in files.items():
        if not isinstance(entries, list):
            raise bad(f"files.{s} must be a list of [path, class index] pairs, got {_brief(entries)}")
        for e in entries:
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
                    and not isinstance(e[1], bool)):
                raise bad(f"files.{s} holds {_brief(e)}; each entry must be [path relative to data.root, class index]")
            p, c = e
            if not 0 <= c < len(classes):
                raise bad(f"files.{s} gives {p} the class index {c}; there are {len(classes)} classes (0..{len(classes) - 1})")
            parts = PurePosixPath(p).parts
            if not p or p.startswith("/") or "\\" in p or ".." in parts or ":" in parts[0]:
                raise bad(f"files.{s} lists {p!r}, which is not a path inside data.root (paths are relative to it, "
                          f"with no '..')")
            folder = parts[1] if layout == "split" and len(parts) > 2 else parts[0] if len(parts) > 1 else None
            if layout == "split" and parts[0] not in SPLIT_NAMES:
                folder = None
            if folder != classes[c]:
                raise bad(f"files.{s} records {p} as class {classes[c]!r}, but it is in the folder "
                          f"{folder!r}: each file's class is the class folder it is in")
            if p in seen:
                twice = f"twice in files.{s}" if seen[p] == s else f"in both files.{seen[p]} and files.{s}"
                raise bad(f"{p} is listed {twice}: the splits must be disjoint and list each file once")
            seen[p] = s
    if not files.get("test"):
        raise bad("files.test is empty: a run's split has test images")
    digest = record.get("files_digest")
    if digest is not None and digest != files_digest(classes, files):
        raise bad("its file lists or classes were changed after the run wrote them (they no longer match "
                  "files_digest), e.g. files moved between train and test; a run is evaluated and resumed on "
                  "the split it was trained with")


def check_record_against(record: dict, raw: RawData) -> None:
    """The saved split still fits the image folder as it is now: the same classes in the same order (class
    folders renamed after training would permute the labels), and every listed file still there."""
    if list(record["classes"]) != list(raw.classes):
        raise DataError(
            f"the class folders of {raw.root} are now {', '.join(raw.classes)}, but this run was trained on "
            f"{', '.join(record['classes'])} (its splits.json): scoring or training on would mix up the labels. "
            f"Restore the folder names, or train a new run on the folder as it is now.")
    have = {p for v in (raw.files or {}).values() for p in v} | {p for p, _ in raw.bad_images}
    missing = [p for v in record["files"].values() for p, _ in v if p not in have]
    if missing:
        raise DataError(
            f"the split this run saved (splits.json) lists {len(missing)} file(s) no longer in {raw.root} "
            f"(e.g. {', '.join(missing[:3])}); restore them, or train a new run on the folder as it is now.")


def check_preprocessing(record: Any, where: Union[str, Path] = "the checkpoint") -> dict:
    """A preprocessing record (:meth:`Splits.preprocessing`, saved in every checkpoint as ``preprocess``)
    as predict, export and ``cnnlab.load`` use it, checked: ``classes`` (at least 2 names), ``input_shape``
    ``[C, H, W]`` of positive whole numbers with C 1 or 3, ``mean`` and ``std`` with C finite numbers each,
    every std above 0 (a std of 0 divides by zero: nan probabilities), ``resize`` absent, null or two
    positive whole numbers. Returns it; else a DataError naming ``where`` and the field."""
    def bad(what: str) -> DataError:
        return DataError(f"{where}: the preprocessing record (preprocess) {what}. cnnlab writes it when training; "
                         f"use a checkpoint of the run as it was written, or train the run again.")

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if not isinstance(record, dict):
        raise bad(f"must be an object, got {_brief(record)}")
    classes = record.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad(f"has classes {_brief(classes)}; expected a list of at least 2 class names")
    shape = record.get("input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(whole(v) for v in shape) \
            or shape[0] not in (1, 3):
        raise bad(f"has input_shape {_brief(shape)}; expected [channels, height, width] with channels 1 or 3 and "
                  f"height and width positive whole numbers")
    for key in ("mean", "std"):
        v = record.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != shape[0] or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise bad(f"has {key} {_brief(v)}; expected {shape[0]} finite number(s), one per channel of "
                      f"input_shape {list(shape)}")
    if any(x <= 0 for x in record["std"]):
        raise bad(f"has std {_brief(record['std'])}; every std must be above 0 (the input is divided by it)")
    resize = record.get("resize")
    if resize is not None and not (isinstance(resize, (list, tuple)) and len(resize) == 2
                                   and all(whole(v) for v in resize)) and not whole(resize):
        raise bad(f"has resize {_brief(resize)}; expected null or [height, width]")
    return record


def _brief(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    folds, seed = setting(data_cfg, "folds"), setting(data_cfg, "split_seed")
    n_test = count_of(0.2 if test_size is None else test_size, n)
    n_val = count_of(0.1 if val_size is None else val_size, n) if val_size != 0 and folds is None else 0
    if n_test + n_val > n - len(counts):
        raise DataError(
            f"data.test_size and data.val_size ask for {n_test} + {n_val} of the {n} images in {raw.root}, leaving "
            f"too few for training (each of the {len(counts)} classes needs one); make them smaller.")
    train, val, test = stratified_split(raw.train_y, n_test, n_val, seed)
    limit = setting(data_cfg, "train_limit")
    if folds is not None:  # the test split as without folds (same seed), the rest cut into folds
        tr, va = fold_split(raw.train_y[train], folds, setting(data_cfg, "fold"), seed, limit,
                            f"{raw.root} less its test split")
        return {"train": train[tr], "val": train[va], "test": test}
    if limit is not None:  # a seeded shuffle of the train split, then its first N (as for the built-in sets)
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(setting(data_cfg, "split_seed")))][:limit]
    return {"train": train, "val": val, "test": test}


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """The fold (0 .. folds - 1) of every image, stratified by class: each class's images in a permutation drawn
    from ``seed`` (one generator, class after class), then all of them dealt to the folds in turn, class after
    class, so every fold holds each class's share to within one image and the folds' sizes differ by at most one."""
    labels = labels.long().cpu()
    g = torch.Generator().manual_seed(seed)
    order = []
    for k in range(int(labels.max()) + 1 if len(labels) else 0):
        members = (labels == k).nonzero().flatten()
        order.append(members[torch.randperm(len(members), generator=g)])
    order_t = torch.cat(order) if order else torch.empty(0, dtype=torch.int64)
    fold_of = torch.empty(len(labels), dtype=torch.int64)
    fold_of[order_t] = torch.arange(len(order_t)) % folds
    return fold_of


def fold_split(labels: torch.Tensor, folds: int, fold: int, seed: int, train_limit: Optional[int] = None,
               where: str = "the training pool") -> tuple[torch.Tensor, torch.Tensor]:
    """(train_index, val_index) into ``labels`` for ``data.folds`` / ``data.fold``: validation is fold ``fold`` of
    :func:`stratified_folds` (sorted), train the other folds in a permutation drawn from ``seed`` (so
    ``train_limit`` keeps a random share of them)."""
    fold_of = stratified_folds(labels, folds, seed)
    val_index = (fold_of == fold).nonzero().flatten()
    if len(val_index) == 0 or len(val_index) == len(labels):
        raise DataError(f"data.folds={folds}: {where} has {len(labels)} image(s), too few to cut into {folds} folds "
                        f"that each validate and train on something; use fewer folds")
    rest = (fold_of != fold).nonzero().flatten()
    train_index = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    return (train_index[:train_limit] if train_limit is not None else train_index), val_index


def fold_record(splits: "Splits", data_cfg: DataSettings) -> Optional[dict[str, Any]]:
    """What ``fold.json`` in a run folder holds for a ``data.folds`` run (None otherwise): the folds, this fold,
    the split seed, and the positions of this run's training and validation images in the training pool (the
    official training set; a flat folder's images in file order), with each class's count in both."""
    folds = setting(data_cfg, "folds")
    if folds is None:
        return None
    counts = {s: torch.bincount(y.long().cpu(), minlength=splits.num_classes).tolist()
              for s, y in (("train", splits.train_y), ("val", splits.val_y))}
    return {"version": 1, "folds": folds, "fold": setting(data_cfg, "fold"), "split_seed": setting(data_cfg, "split_seed"),
            "classes": list(splits.classes), "counts": counts,
            "train_index": splits.train_index.tolist(), "val_index": splits.val_index.tolist()}


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


@dataclass
class _Parts:
    """Each split before placement: (the RawData tensor holding its images, their positions in it; None: all,
    in order), its labels, its files; the train/val positions; the train statistics (None: of the train split,
    computed after placement)."""
    parts: dict[str, tuple[str, Optional[torch.Tensor]]]
    ys: dict[str, torch.Tensor]
    files: Optional[dict[str, list]]
    train_index: torch.Tensor
    val_index: torch.Tensor
    mean: Optional[tuple] = None
    std: Optional[tuple] = None


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
    if saved is not None:
        check_record(saved)
    raw = load_raw(data_cfg)
    if saved is not None and raw.files is not None:
        check_record_against(saved, raw)
    if setting(data_cfg, "test_size") is not None and raw.layout != "flat":
        raise DataError(f"data.test_size is set, but {name} ({raw.source}) has its own test images; data.test_size "
                        f"splits a flat root/<class>/ image folder only. Remove it.")
    # nothing is gathered until the placement is known
    p = _flat_parts(raw, data_cfg, saved) if raw.layout == "flat" else _official_parts(raw, data_cfg)
    native = raw.train_x.shape[1]
    channels = setting(data_cfg, "channels") or native
    if channels != native and not (channels == 3 and native == 1) and not (channels == 1 and native == 3):
        raise DataError(f"data.channels={channels} cannot be made from {native}-channel images")
    grey = channels == 1 and native == 3  # converted once (or per streamed batch), not per training batch
    dev = torch.device(device)
    xs, where = _place(raw, p.parts, grey, dev, setting(data_cfg, "max_memory"), name)
    mean, std = p.mean, p.std
    if mean is None or grey:  # statistics of the images as stored (a flat folder's train split, grey images)
        mean, std = placement.host_stats(xs["train"]) if isinstance(xs["train"], HostImages) \
            else channel_stats(xs["train"])
    if channels == 3 and native == 1:
        mean, std = tuple(mean) * 3, tuple(std) * 3  # Preprocess repeats the channel
    resize = setting(data_cfg, "resize")
    if not isinstance(xs["train"], HostImages):
        xs = {s: x.to(dev) for s, x in xs.items()}
    ys = p.ys
    return Splits(
        train_x=xs["train"], train_y=ys["train"].to(dev),
        val_x=xs["val"], val_y=ys["val"].to(dev),
        test_x=xs["test"], test_y=ys["test"].to(dev),
        classes=list(raw.classes), mean=tuple(mean), std=tuple(std), num_classes=len(raw.classes),
        in_channels=channels, image_size=_image_size(raw, resize), source=raw.source, name=name,
        train_index=p.train_index, val_index=p.val_index,
        resize=((resize, resize) if isinstance(resize, int) else tuple(resize)) if resize else None,
        resize_policy=setting(data_cfg, "resize_policy"), interpolation=setting(data_cfg, "resize_mode"),
        resized_on_decode=bool(resize) and "resize" in DATASETS.get(name).options,
        root=str(raw.root) if raw.root is not None else None, files=p.files,
        bad_images=list(raw.bad_images), skipped=list(raw.skipped), placement=where, layout=raw.layout,
    )  # fmt: skip


def _flat_parts(raw: RawData, data_cfg: DataSettings, saved: Optional[dict]) -> _Parts:
    """A flat root/<class>/ folder: train, val and test drawn from its one set of images, stratified by class
    (or as ``saved`` says); the statistics are the train split's, computed once it is placed."""
    idx = _split_flat(raw, data_cfg, saved)
    y_all = raw.train_y
    paths = raw.files["train"] if raw.files else []
    return _Parts(parts={s: ("train_x", i) for s, i in idx.items()}, ys={s: y_all[i] for s, i in idx.items()},
                  files={s: [(paths[j], int(y_all[j])) for j in i.tolist()] for s, i in idx.items()},
                  train_index=idx["train"], val_index=idx["val"])


def _official_parts(raw: RawData, data_cfg: DataSettings) -> _Parts:
    """A data set with its own test images: validation from its val/ folder, else a seeded share of its
    training images (data.val_size, the data set's default, else a tenth); data.train_limit cuts train."""
    name, seed, limit = setting(data_cfg, "name"), setting(data_cfg, "split_seed"), setting(data_cfg, "train_limit")
    val_size = setting(data_cfg, "val_size")
    n = len(raw.train_x)
    folds = setting(data_cfg, "folds")
    if raw.val_x is not None and folds is not None:
        raise DataError(f"data.folds is set, but {raw.root}/val/ holds the validation images; k-fold validation "
                        f"takes its folds from the training images: remove data.folds or the val/ folder.")
    if folds is not None:  # validation = one fold of the official training set; its test set untouched
        train_index, val_index = fold_split(raw.train_y, folds, setting(data_cfg, "fold"), seed, limit,
                                            f"{name}'s training set")
        val_part, val_y = ("train_x", val_index), raw.train_y[val_index]
    elif raw.val_x is not None:
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
    files = None
    if raw.files is not None:
        tr = raw.files["train"]
        files = {"train": [(tr[j], int(raw.train_y[j])) for j in train_index.tolist()],
                 "val": ([(tr[j], int(raw.train_y[j])) for j in val_index.tolist()] if raw.val_x is None else
                         list(zip(raw.files.get("val", []), raw.val_y.tolist()))),
                 "test": list(zip(raw.files.get("test", []), raw.test_y.tolist()))}
    return _Parts(parts={"train": ("train_x", train_index), "val": val_part, "test": ("test_x", None)},
                  ys={"train": raw.train_y[train_index], "val": val_y, "test": raw.test_y}, files=files,
                  train_index=train_index, val_index=val_index, mean=raw.mean, std=raw.std)


def _image_size(raw: RawData, resize) -> Union[int, tuple[int, int]]:
    """The images' size as the model sees them: data.resize, else the stored size (one number when square)."""
    h, w = raw.train_x.shape[-2:]
    image_size: Union[int, tuple[int, int]] = resize if resize else (h if h == w else (h, w))
    if isinstance(image_size, (list, tuple)):
        image_size = tuple(image_size)  # type: ignore[assignment]
        if image_size[0] == image_size[1]:
            image_size = image_size[0]
    return image_size


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
