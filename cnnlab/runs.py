"""The run folder and cnnlab's one I/O policy: every file written so a kill never corrupts it.

All of cnnlab's file writes go through this module (docs/CONTRACTS.md, "I/O rules"):
- Whole files (``summary.json``, ``config.yaml``, ``plan.json``, checkpoints, plots,
  reports) go through one atomic writer: a temporary file in the same folder, flushed
  and fsync'ed, then ``os.replace``'d over the target, so a reader sees either the old
  file or the new one, never half of either.
- JSON-lines files (``metrics.jsonl``, a sweep's ``results.jsonl``) grow through one
  appender: an exclusive ``fcntl.flock`` on the file, then the whole line in one
  ``os.write`` on an ``O_APPEND`` descriptor, so concurrent writers never interleave.
- One rule for numbers JSON cannot hold: NaN, +inf and -inf are written as ``null``
  (strict JSON that any reader parses); readers treat ``null`` as "no finite value".
Checkpoints hold only tensors and plain Python values so they load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import zipfile

try:
    import fcntl
except ImportError:  # Windows: appends stay single-write O_APPEND, without the lock
    fcntl = None
from pathlib import Path
from typing import Any, Callable

import torch

from cnnlab.errors import ConfigError

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "best.pt", "last.pt", "curves.png")


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely (truncated, corrupted, or carrying code)."""


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; run folders are meant to be shared
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # disk full, read-only, file too large: say which file
            raise _naming(e, path) from None
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """The same error (same errno, so the same OSError subclass) naming the file being written."""
    if e.errno is None:
        return e
    return OSError(e.errno, f"{e.strerror}: cannot write {path}")


class _WriteErrors:
    """A file wrapper that remembers the OSError of a failed write: torch.save turns it into a
    RuntimeError ("unexpected pos ...") that no longer says that the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file, fsync, rename)."""
    _atomic(path, lambda f: f.write(text), mode="w")


def write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file (a PNG, a report) atomically."""
    _atomic(path, lambda f: f.write(data))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN, +inf and -inf replaced by None: the one rule for non-finite numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(data: Any, indent: int | None = None) -> str:
    """Strict JSON text (non-finite numbers as null); what every cnnlab file write uses."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    """Write a JSON file atomically; NaN and infinities become null."""
    write_text(path, json_text(data, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rewrite a whole JSON-lines file atomically (e.g. a resumed run's trimmed metrics.jsonl)."""
    write_text(path, "".join(json_text(r) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    """A JSON file's content (raises OSError / ValueError; see cnnlab.results for forgiving readers)."""
    return json.loads(Path(path).read_text())


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line: exclusive flock, then the whole line in one O_APPEND write,
    so concurrent appenders (sweep workers, Ray trials) never interleave or lose lines."""
    line = (json_text(row) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise _naming(e, Path(path)) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close()
        view = memoryview(line)
        while view:  # one write for a regular file; a short one (disk nearly full) must not pass silently
            view = view[os.write(fd, view):]
    except OSError as e:
        raise _naming(e, Path(path)) from None
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a kill mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def save_checkpoint(path: Path, state: dict) -> None:
    def write(f):
        recorder = _WriteErrors(f)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    _atomic(path, write)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: a file that carries code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # torch.load does not check the CRC32s its zip format stores: a flipped byte in a tensor would
    # load as silently wrong weights. zipfile checks them.
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        bad = None  # not a zip at all: torch.load below says so
    if bad is not None:
        raise CheckpointError(f"cannot load checkpoint {path}: {bad} inside it fails its CRC check, so the file "
                              "is corrupted; re-create it or point at another file.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: {first}. The file is truncated, corrupted, or holds objects other "
            "than tensors and plain values (cnnlab never unpickles code); re-create it or point at another file."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def environment(device: torch.device | str) -> dict:
    """Versions and machine facts recorded with every run (reproducibility)."""
    import numpy
    import torchvision

    from cnnlab.version import __version__

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "cnnlab": __version__,
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }
    try:
        import matplotlib

        env["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    if str(device).startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- a training run's checkpoints


def checkpoint_state(s) -> dict:
    """Everything needed to resume a run bit-identically: weights, optimizer, schedule, EMA,
    progress, random-number generator states and the config. ``s`` is the trainer's state
    (:class:`cnnlab.train.TrainState`)."""
    return {
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.schedule.state_dict(),
        "ema": s.ema.state_dict() if s.ema is not None else {},
        "step": s.progress.step,
        "progress": dict(vars(s.progress)),
        "rng": {"torch": torch.get_rng_state(), "augment": s.aug_gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": s.cfg.to_dict(),
        "preprocess": s.preprocess,
    }


def restore(path: Path, s) -> None:
    """Load a :func:`checkpoint_state` file into the trainer's state ``s`` (its progress too)."""
    state = load_checkpoint(path, map_location=s.device)
    missing = [k for k in ("model", "optimizer", "scheduler", "ema", "rng", "progress") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a cnnlab run checkpoint (it has no {', '.join(missing)}); "
                              "--resume needs the last.pt a run wrote")
    try:
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.schedule.load_state_dict(state["scheduler"])
        if s.ema is not None and state["ema"]:
            s.ema.load_state_dict(state["ema"])
        rng = state["rng"]
        # set_state takes CPU byte tensors, also for CUDA generators; map_location may have moved them.
        torch.set_rng_state(rng["torch"].cpu())
        s.aug_gen.set_state(rng["augment"].cpu())
        if rng["cuda"] and torch.cuda.is_available():  # a run saved on more GPUs than are visible now
            torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"][:torch.cuda.device_count()]])
        s.progress = type(s.progress)(**state["progress"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise does_not_fit(path, e) from None


def load_weights(path: Path, s) -> None:
    """Load only the weights (the model's and the EMA's) of a checkpoint into the trainer's state."""
    state = load_checkpoint(path, map_location="cpu")  # copied onto the device by load_state_dict
    s.model.load_state_dict(state["model"])
    if s.ema is not None and state["ema"]:
        s.ema.load_state_dict(state["ema"])


def does_not_fit(path: Path, e: BaseException) -> CheckpointError:
    """A well-formed checkpoint of another network, optimizer or cnnlab version."""
    text = " ".join(str(e).split())
    return CheckpointError(f"checkpoint {path} does not fit this run's network and settings "
                           f"({type(e).__name__}: {text[:300]}); it was saved by another run or model")


def save_misclassified(run_dir: Path, mistakes: dict) -> None:
    """``misclassified.pt``: the test split's most confident mistakes (images, true and predicted
    classes, confidence), for the report's grid."""
    save_checkpoint(Path(run_dir) / "misclassified.pt", mistakes)


# ----------------------------------------------------------------------------- the folder a training run writes


class RunExistsError(ConfigError):
    """The output folder already holds a run; resume it or pass --force."""


def prepare_out_dir(out_dir: Path, resume: bool, force: bool, finished: bool = False) -> None:
    """Refuse to overwrite a run unless asked; --force clears only cnnlab's own files.

    ``finished`` (the folder holds a run with a final status) only words the refusal."""
    # A kill while a file was being written leaves its temporary (.last.pt.x1y2.tmp) behind: drop them.
    if (resume or force) and out_dir.is_dir():
        for name in (*RUN_FILES, "report.html", "misclassified.pt"):
            for tmp in out_dir.glob(f".{name}.*tmp"):
                tmp.unlink(missing_ok=True)
    if resume:
        if not (out_dir / "last.pt").exists():
            raise RunExistsError(f"--resume: {out_dir} has no last.pt to resume from")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            state = "a finished run" if finished else "an unfinished run"
            raise RunExistsError(
                f"{out_dir} already holds {state}; pass --resume to continue it, --force to overwrite it, "
                "or choose another --out"
            )
        for name in (*RUN_FILES, "report.html", "misclassified.pt", "train.log"):
            (out_dir / name).unlink(missing_ok=True)


def tensorboard_writer(out_dir: Path):
    """A TensorBoard event writer in ``<run>/tensorboard`` (``tensorboard --logdir runs``)."""
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (checked at load)

    return SummaryWriter(str(out_dir / "tensorboard"))


def write_scalars(board, row: dict) -> None:
    """One evaluation point's numbers as train/loss, val/accuracy, lr, ... at its step."""
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
            board.add_scalar(key.replace("train_", "train/", 1).replace("val_", "val/", 1), value, row["step"])
    board.flush()  # live curves: TensorBoard reads the file while the run goes on


# ----------------------------------------------------------------------------- an image folder's split


def write_split_record(run_dir: Path, record: dict | None) -> None:
    """``splits.json`` (each split's files, skipped images, preprocessing) and ``bad_images.txt``
    (one ``path<TAB>why`` line per image skipped by ``data.skip_bad_images``); nothing for
    the built-in data sets, whose splits are fixed (``record`` None)."""
    if record is None:
        return
    write_json(Path(run_dir) / "splits.json", record)
    if record["bad_images"]:
        write_text(Path(run_dir) / "bad_images.txt", "".join(f"{p}\t{why}\n" for p, why in record["bad_images"]))


def read_split_record(run_dir: Path) -> dict | None:
    """The ``splits.json`` a run saved, so ``--resume`` and ``cnnlab eval`` see the same images."""
    path = Path(run_dir) / "splits.json"
    return read_json(path) if path.is_file() else None
