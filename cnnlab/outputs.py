"""What cnnlab writes, told apart from what users give it: run and sweep folders, and output paths.

Two rules live here, each in one place. A command that writes a file (``cnnlab export --out``,
``cnnlab predict --out``) never replaces a file a run wrote: :func:`check_out_file` refuses such a
path (and a folder, or a path in a missing folder) in one paragraph before any work starts. And the
image-folder scan never reads cnnlab's own outputs as data: :func:`is_cnnlab_output` tells a run or
sweep folder by the files cnnlab leaves in it. Light on purpose (no torch, no config schema): the
data layer imports it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from cnnlab.errors import ConfigError

# What a run folder holds that its run wrote (cnnlab.runs writes them; train.log, report.html and the
# rest beside). A name here inside a run folder is never another command's output.
RUN_OWN = ("config.yaml", "metrics.jsonl", "summary.json", "best.pt", "last.pt", "curves.png", "report.html",
           "misclassified.pt", "train.log", "mlflow.json", "splits.json", "bad_images.txt", "tensorboard",
           ".cnnlab.lock")
# a folder is a run folder when it holds config.yaml and one of these (a run killed at once holds the lock only)
RUN_MARKERS = ("metrics.jsonl", "summary.json", "last.pt", "best.pt", "train.log", ".cnnlab.lock")
SWEEP_MARKERS = ("results.jsonl", ".sweep.lock")


def is_run_folder(folder: Union[str, Path]) -> bool:
    """Whether ``folder`` is a cnnlab run folder: config.yaml beside what training writes, or the lock
    alone (a run that is starting: it takes its folder's lock before it reads any data)."""
    folder = Path(folder)
    try:
        return os.path.lexists(folder / ".cnnlab.lock") or (
            (folder / "config.yaml").is_file() and any(os.path.lexists(folder / m) for m in RUN_MARKERS))
    except OSError:
        return False


def is_cnnlab_output(folder: Union[str, Path]) -> bool:
    """Whether ``folder`` is a run folder or a sweep folder: what cnnlab wrote, never data."""
    folder = Path(folder)
    try:
        return is_run_folder(folder) or any(os.path.lexists(folder / m) for m in SWEEP_MARKERS)
    except OSError:
        return False


def check_out_file(out: Union[str, Path], what: str = "--out") -> Path:
    """``out`` as a file a command may write, else a ConfigError (exit 2) naming it: not a folder, in a
    folder that exists, and not one of the files a run wrote (``RUN/best.pt``, ``RUN/summary.json``, ...,
    through a link or ``..`` too): a command's output never replaces a run's own file."""
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"{what}: expected a file path, got {out!r}")
    path = Path(out).expanduser()
    if not str(out).strip():
        raise ConfigError(f"{what}: empty path; name the file to write, e.g. model.onnx or predictions.csv")
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; name a file to write inside it (e.g. {path / 'model.onnx'} "
                          f"for export, {path / 'predictions.csv'} for predict)")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{what} {path}: the folder {parent} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
    target = path.resolve()  # a link to best.pt, RUN/sub/../summary.json: where it would really be written
    for folder in (target.parent, *target.parent.parents):
        if is_run_folder(folder):
            first = target.relative_to(folder).parts[0]
            if first in RUN_OWN or (first.endswith(".pt") and (folder / first).exists()):
                raise ConfigError(
                    f"{what} {path}: that is {folder / first}, a file the run in {folder} wrote; a command never "
                    f"replaces a run's own files ({', '.join(n for n in RUN_OWN if not n.startswith('.'))} and "
                    f"its checkpoints). Choose another name, e.g. {folder / 'export'}{path.suffix or '.out'}")
            break
    return path


# ----------------------------------------------------------------------------- names as text

NAME_SHOWN = 48  # characters of a class or setting name shown in a plot or a terminal table


def shown(name: Any, limit: int | None = NAME_SHOWN) -> str:
    """A name (a class folder, a setting) as plain printable text: undecodable bytes (lone surrogates)
    and control characters become U+FFFD, and a name longer than ``limit`` is cut with an ellipsis."""
    text = str(name).encode("utf-8", "replace").decode("utf-8")
    text = "".join("\ufffd" if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0) else c for c in text)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
