"""Using a trained run on new images: decode loose files, predict, score its splits or another folder.

The run itself comes from :func:`cnnlab.inference.load.load_run` (the one run loader). :func:`read_image`
decodes one image as training decodes (:mod:`cnnlab.data.decode`). ``cnnlab predict`` is
:func:`predict_paths` + :func:`format_table`; ``cnnlab eval RUN`` is :func:`evaluate_run` (its own splits
again); ``cnnlab eval RUN data.root=...`` is :func:`evaluate_on` (the whole other folder, scored with the
run's own normalisation; its class names must be the run's).
"""
from __future__ import annotations

import csv
import glob
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from cnnlab import data as datamod
from cnnlab import runs
from cnnlab.config.load import build_config
from cnnlab.config.schema import ConfigError, apply_overrides
from cnnlab.data import DataError
from cnnlab.data import splits as data_splits
from cnnlab.data.augment import Preprocess
from cnnlab.data.check import IMAGE_SUFFIXES  # the suffixes an image folder is scanned for
from cnnlab.data.decode import Decode, decode_image  # the one decoding training uses too
from cnnlab.inference.load import LoadedRun, load_run, short_reason
from cnnlab.training import metrics
from cnnlab.training.scoring import SPLITS

# settings `cnnlab eval RUN key=value` may change besides data.*: none of them changes the network
EVAL_OVERRIDES = ("train.device", "train.eval_batch_size", "train.tta", "train.precision", "train.threads")


# ----------------------------------------------------------------------------- decoding and the transform


def read_image(source: Any, channels: int, size: Sequence[int], mode: str = "stretch",
               interpolation: str = "bilinear") -> torch.Tensor:
    """One image as uint8 ``[channels, H, W]`` at ``size`` (H, W) by :func:`cnnlab.data.decode.decode_image`
    (training's decoding): a path or a PIL image, EXIF orientation applied, grey / palette / RGBA converted
    (transparency over black). ``mode`` is the resize policy: ``crop`` (scale the shorter side, cut the
    centre), ``pad`` (letterbox on black), anything else stretches (``bicubic``: stretch with bicubic
    filtering, as older runs said it). Raises OSError or ValueError for a file that is not a readable image."""
    policy = mode if mode in ("crop", "pad") else "stretch"
    interpolation = "bicubic" if mode == "bicubic" else interpolation
    decode = Decode((int(size[0]), int(size[1])), policy, interpolation)
    return decode_image(source, decode, channels)


# ----------------------------------------------------------------------------- cnnlab predict


def find_images(patterns: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files named, files under folders (recursively, image suffixes only, hidden ones skipped) and
    glob matches, in order without repeats; plus one problem line per input that matched nothing."""
    files, problems, seen = [], [], set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    for pattern in patterns:
        p = Path(pattern)
        matches = [p] if p.exists() else [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        if not matches:
            problems.append(f"{pattern}: no such file, folder or matching pattern")
        for m in matches:
            if m.is_dir():
                inside = sorted(f for f in m.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                                and not any(part.startswith(".") for part in f.relative_to(m).parts))
                if not inside:
                    problems.append(f"{m}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
                for f in inside:
                    add(f)
            else:
                add(m)
    return files, problems


def predict_paths(run: LoadedRun, patterns: Iterable[str], top_k: int = 3, tta: bool = False,
                  batch_size: int = 256, calibrated: bool = False) -> tuple[list[dict], list[str]]:
    """Predictions for every readable image the patterns name, and one line per unreadable input.
    Raises DataError when nothing at all was readable."""
    if calibrated:
        run.calibration_temperature()  # refused before any image is read
    files, problems = find_images(patterns)
    rows = []
    for i in range(0, len(files), batch_size):
        names, decoded = [], []
        for f in files[i:i + batch_size]:
            try:
                decoded.append(run.transform.read(f))
                names.append(str(f))
            except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated, bombs
                problems.append(f"{f}: not a readable image ({short_reason(e)})")
        rows += run._rows(names, decoded, top_k, tta, calibrated=calibrated)
    if not rows:
        raise DataError("no readable image among the inputs:\n  " + "\n  ".join(problems or ["(none given)"]))
    return rows, problems


def format_table(rows: list[dict]) -> str:
    """Predictions as a text table: file, then class and probability for each of the top k."""
    k = max(len(r["top"]) for r in rows)
    fw = min(60, max(4, *(len(r["file"] or "") for r in rows)))
    cw = max(5, *(len(c) for r in rows for c, _ in r["top"]))
    head = f"{'file':<{fw}}" + "".join(f"  {f'class {i + 1}':<{cw}} {'p':>6}" for i in range(k))
    lines = [head]
    for r in rows:
        name = r["file"] or "-"
        name = name if len(name) <= fw else "…" + name[-(fw - 1):]
        lines.append(f"{name:<{fw}}" + "".join(f"  {c:<{cw}} {p:6.4f}" for c, p in r["top"]))
    return "\n".join(lines)


def write_predictions(path: str | Path, rows: list[dict]) -> Path:
    """``.csv`` (file, class_1, p_1, ...) or ``.json`` (the rows) through the atomic writer."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        runs.write_json(path, [{"file": r["file"], "class": r["class"], "probability": r["probability"],
                                "top": [{"class": c, "probability": p} for c, p in r["top"]]} for r in rows])
    elif path.suffix.lower() == ".csv":
        k = max(len(r["top"]) for r in rows)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", *[f"{x}_{i + 1}" for i in range(k) for x in ("class", "p")]])
        for r in rows:
            w.writerow([r["file"], *[v for c, p in r["top"] for v in (c, f"{p:.6f}")]])
        runs.write_text(path, buf.getvalue())
    else:
        raise ConfigError(f"out: {path} must end in .csv or .json")
    return path


# ----------------------------------------------------------------------------- cnnlab eval RUN


def evaluate_run(run_dir: str | Path, splits: Sequence[str] = ("test",), checkpoint: str = "best.pt") -> dict:
    """Score a run's checkpoint again on its own splits (``cnnlab eval``): the same images (an image
    folder's saved split), preprocessing and precision as the run's final scoring, so the same numbers."""
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(f"--split: {s!r} is not a split; use {', '.join(SPLITS)}")
    run = load_run(run_dir, checkpoint, device=None)
    run_dir, cfg = Path(run_dir), run.config
    data = datamod.load_splits(cfg.data, run.device, saved=data_splits.saved_record(run_dir))
    evaluator = run.evaluator(Preprocess(data, cfg.data, train=False), cfg.train.eval_batch_size, cfg.train.tta)
    result = {"run_dir": str(run_dir), "checkpoint": checkpoint, "step": run.step}
    lines = [f"{run_dir} / {checkpoint} (step {run.step})"]
    for s in splits:
        r = evaluator.score(run.model, getattr(data, f"{s}_x"), getattr(data, f"{s}_y"), full=True)
        r.pop("_mistakes")
        result[s] = r
        lines.append(f"{s}: accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}, f1_macro {r['f1_macro']:.4f}")
        lines.append(metrics.format_per_class(r, list(data.classes)))
        lines.append("confusion (rows: true, columns: predicted):\n" + metrics.format_confusion(r["confusion"],
                                                                                           list(data.classes)))
    result["text"] = "\n".join(lines)
    return result


# ----------------------------------------------------------------------------- cnnlab eval RUN data.root=...


def evaluate_on(run_dir: str | Path, overrides: list[str] | dict, checkpoint: str = "best.pt",
                split: str = "all") -> dict:
    """Score a run's checkpoint on another labelled data set (``data.*`` overrides, e.g. ``data.root``):
    every image of it (``split``: all, or only its train / test part), preprocessed with the run's own
    channels, size and normalisation. Its class names must be the run's."""
    items = overrides.items() if isinstance(overrides, dict) else [o.split("=", 1) for o in overrides]
    for key, _ in items:
        if not (key.startswith("data.") or key in EVAL_OVERRIDES):
            raise ConfigError(f"{key}: eval takes data.* settings (another data set to score) and "
                              f"{', '.join(EVAL_OVERRIDES)}; the network is the run's")
    run = load_run(run_dir, checkpoint, device=None, overrides={k: v for k, v in items if not k.startswith("data.")})
    cfg = build_config(apply_overrides(run.config.to_dict(), overrides), "eval overrides")
    if split not in ("all", "train", "test"):
        raise ConfigError(f"split: {split!r}; on another data set use all, train or test")
    raw = datamod.load_raw(cfg.data)
    if split != "all" and raw.layout == "flat":
        raise ConfigError(f"--split {split}: {raw.root} is one folder per class, with no train/ and test/ parts; "
                          "leave --split out to score every image of it")
    parts = {"train": [(raw.train_x, raw.train_y)], "test": [(raw.test_x, raw.test_y)]}
    pieces = [p for p in parts.get(split) or parts["train"] + parts["test"] if len(p[1])] or parts["test"]
    # one part is scored where it is (a memory-mapped cache stays mapped on a CPU); two are joined
    x, y = pieces[0] if len(pieces) == 1 else (torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]))
    y = _match_classes(run.classes, list(raw.classes), y.to(torch.int64), cfg.data.root or cfg.data.name)
    device = run.device
    mode = cfg.train.tta if cfg.train.tta != "none" and run.preprocess.get("tta", "none") != "none" else "none"
    ev = run.evaluator(run.transform.batch, cfg.train.eval_batch_size, mode)
    r = ev.score(run.model, x.to(device), y.to(device), full=True)
    r.pop("_mistakes")
    where = f"{cfg.data.name} at {datamod.resolve_root(cfg.data)}"
    text = [f"{run.run_dir} / {checkpoint} (step {run.step}) on {where} ({split}: {len(y):,} images; {raw.source})",
            f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}, f1_macro {r['f1_macro']:.4f}",
            metrics.format_per_class(r, run.classes), "confusion (rows: true, columns: predicted):",
            metrics.format_confusion(r["confusion"], run.classes)]
    return {"run_dir": str(run.run_dir), "checkpoint": checkpoint, "step": run.step, "data": where,
            "split": split, split: r, "text": "\n".join(text)}


def _match_classes(run_classes: list[str], data_classes: list[str], y: torch.Tensor, where: str) -> torch.Tensor:
    """Labels of the other data set in the run's class order; an error naming the classes that differ."""
    if data_classes == run_classes:
        return y
    only_run = [c for c in run_classes if c not in data_classes]
    only_data = [c for c in data_classes if c not in run_classes]
    if only_run or only_data:
        parts = ([f"only in the run: {', '.join(only_run)}"] if only_run else []) + (
            [f"only in {where}: {', '.join(only_data)}"] if only_data else [])
        raise DataError(f"the classes of {where} differ from the run's ({'; '.join(parts)}); a model can only be "
                        "scored on the classes it was trained for")
    order = torch.tensor([run_classes.index(c) for c in data_classes])
    return order[y]
