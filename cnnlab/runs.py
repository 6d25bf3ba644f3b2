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

import enum
import errno
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
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
    """A JSON file's content (raises OSError / ValueError; see cnnlab.reporting.results for forgiving readers)."""
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
        raise CheckpointError(f"cannot load checkpoint {path}: it {why_not_loadable(path, e)}; re-create it or "
                              "point at another file") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def why_not_loadable(path: Path, e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in cnnlab's words ("is not a checkpoint",
    "holds objects other than tensors ...", "is truncated or corrupted"). torch's advice to retry with
    weights_only=False is never passed on: for an untrusted file it means running its code."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    # torch.save writes a zip (PK..) or, in the legacy format, a pickle (protocol byte 0x80)
    if not (head == b"PK" or head[:1] == b"\x80"):
        return "is not a checkpoint (neither a torch.save zip nor a pickle; text or another format)"
    text = str(e)
    if "Unsupported global" in text or "GLOBAL" in text or "Unsupported operand" in text:
        named = [line.strip() for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line]
        detail = f" ({named[0][:160]})" if named else ""
        return ("holds Python objects other than tensors and plain values, which cnnlab never unpickles "
                f"(that could run code){detail}")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "weights_only" not in line and "Weights only load failed" not in line
             and "trust" not in line]
    return f"is truncated or corrupted ({type(e).__name__}: {(lines or ['unreadable'])[0][:160]})"


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


def trained_network(model: torch.nn.Module, state: dict, path: Path) -> torch.nn.Module:
    """``model`` (freshly built) with the weights a run kept in checkpoint ``state``: the EMA's when the
    run averaged its weights, else the model's own."""
    try:
        if state.get("ema"):
            averaged = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
            averaged.load_state_dict(state["ema"])
            return averaged.module
        model.load_state_dict(state["model"])
        return model
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise does_not_fit(path, e) from None


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


class BusyError(ConfigError):
    """A run or sweep folder that another process is writing (exit code 2)."""


LOCK_NAME = ".cnnlab.lock"  # in a run folder: one training process at a time (sweep folders: .sweep.lock)


class FolderLock:
    """An exclusive ``fcntl.flock`` on ``<folder>/<name>``, held while the folder is written.

    The kernel drops the lock when its holder ends in any way (kill -9 included), so a lock file left
    behind by a kill is never stale. The file holds the holder's pid, start time and command, which a refusal
    quotes; the holder removes it as it lets go. ``wait``: False refuses at once (:class:`BusyError` naming the holder), True blocks,
    a number blocks at most that many seconds."""

    def __init__(self, folder: Path, name: str = LOCK_NAME, what: str = "run folder", wait: bool | float = False):
        self.folder, self.path, self.what, self.wait, self.fd = Path(folder), Path(folder) / name, what, wait, None
        self.made: list[Path] = []

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} is a file, not a folder; choose another --out")
        self.made = [d for d in (self.folder, *self.folder.parents) if not d.exists()]  # removed again if unused
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(e) from None
        deadline = None if self.wait is True else time.monotonic() + float(self.wait or 0)
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            except OSError as e:
                raise self._error(e) from None
            if fcntl is None:  # Windows: no advisory locks; one writer is the user's to ensure
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder removes the file as it lets go: a lock on a removed file locks nothing, retry.
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
                os.close(fd)
                continue
            except BlockingIOError:
                os.close(fd)
                if deadline is not None and time.monotonic() >= deadline:
                    raise BusyError(f"{self.folder} is in use: {self.holder()} is writing this {self.what}; wait "
                                    "for it to end (or stop it), or choose another folder") from None
                if not told and self.wait is True:
                    print(f"waiting for {self.holder()} to finish with {self.folder} ...", flush=True)
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, json_text({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "command": " ".join(sys.argv)}).encode())
        self.fd = fd

    def _error(self, e: OSError) -> Exception:
        """A path through a file is bad input (exit 2); a read-only or full disk cannot save (exit 1)."""
        if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG):
            return ConfigError(f"cannot use {self.folder} as a {self.what}: {e.strerror}")
        return _naming(e, self.path)

    def holder(self) -> str:
        try:
            h = json.loads(self.path.read_text() or "{}")
            return f"process {h['pid']} ({h['command']}, started {h['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire_and_release(self) -> None:
        """Wait (as ``wait`` says) until no other process holds the lock; hold nothing afterwards."""
        self.acquire()
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            # Remove the file while still holding it (a waiter re-checks the inode it locked), then let go;
            # a folder this lock created and nothing else used goes too, so a refused run leaves nothing.
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
            for d in self.made:
                try:
                    d.rmdir()
                except OSError:
                    break


def is_locked(folder: Path, name: str = LOCK_NAME) -> bool:
    """Whether some process holds the folder's lock now (a test of the lock, not a wait)."""
    path = Path(folder) / name
    if fcntl is None or not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# What a run folder may hold besides progress worth keeping: a folder with only these (a run killed
# before its first checkpoint) is started afresh without --force.
LEFTOVERS = ("config.yaml", "metrics.jsonl", "train.log", "report.html", "curves.png", LOCK_NAME,
             "mlflow.json")  # mlflow.json: cnnlab.training.tracking's link to the MLflow run


def prepare_out_dir(out_dir: Path, resume: bool, force: bool, finished: bool = False) -> bool:
    """Refuse to overwrite a run unless asked; --force clears only cnnlab's own files. Returns whether
    the run resumes: ``--resume`` of a folder without ``last.pt`` (killed before its first checkpoint)
    starts afresh, and so does a plain re-run of such a folder.

    ``finished`` (the folder holds a run with a final status) only words the refusal."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a folder; choose another --out")
    # A kill while a file was being written leaves its temporary (.last.pt.x1y2.tmp) behind: drop them.
    if out_dir.is_dir():
        for name in (*RUN_FILES, "report.html", "misclassified.pt"):
            for tmp in out_dir.glob(f".{name}.*tmp"):
                tmp.unlink(missing_ok=True)
    has_checkpoint = (out_dir / "last.pt").exists()
    if resume and has_checkpoint:
        return True
    names = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    if names and (resume or not force) and not has_checkpoint and not (out_dir / "summary.json").exists() \
            and names <= set(LEFTOVERS) | {"tensorboard"}:
        force = True  # killed before its first checkpoint: nothing to keep, nothing to resume
    elif resume:
        raise RunExistsError(f"--resume: {out_dir} has no last.pt to resume from")
    if names - {LOCK_NAME}:
        if not force:
            state = "a finished run" if finished else "an unfinished run"
            raise RunExistsError(
                f"{out_dir} already holds {state}; pass --resume to continue it, --force to overwrite it, "
                "or choose another --out"
            )
        for name in (*RUN_FILES, "report.html", "misclassified.pt", "train.log", "mlflow.json"):
            (out_dir / name).unlink(missing_ok=True)
    return False


# ----------------------------------------------------------------------------- how a run ended


class Status(enum.StrEnum):
    """How a run ended (``summary.json`` / results rows), plus the two states of rows not run yet."""

    COMPLETED = "completed"  # trained for the planned steps
    EARLY_STOPPED = "early_stopped"  # stopped by early stopping: a normal, finished run
    DIVERGED = "diverged"  # the loss became non-finite: finished, with no usable result
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM: last.pt kept, resumable
    PRUNED = "pruned"  # stopped early by a sweep scheduler (Ray Tune's ASHA, median): finished, not in statistics
    FAILED = "failed"  # an error: a sweep runs it again
    PENDING = "pending"  # a planned run with no row yet (sweep tables)
    PLANNED = "planned"  # a dry run's rows


FINAL_STATUSES = (Status.COMPLETED, Status.EARLY_STOPPED, Status.DIVERGED, Status.PRUNED)  # a sweep does not run these again
SUCCEEDED = (Status.COMPLETED, Status.EARLY_STOPPED)  # metrics that count; the CLI exits 0


def succeeded(status: Any) -> bool:
    return status in SUCCEEDED


def is_final(status: Any) -> bool:
    return status in FINAL_STATUSES


def read_summary(run_dir: str | Path) -> dict | None:
    """A run folder's summary.json as a dict, or None when it is missing, torn or not a mapping."""
    try:
        data = read_json(Path(run_dir) / "summary.json")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A run folder's metrics.jsonl rows (a torn last line is skipped)."""
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if isinstance(r, dict)]


def is_finished(run_dir: str | Path) -> bool:
    """True when the run folder's summary.json holds a final status."""
    summary = read_summary(run_dir)
    return bool(summary) and is_final(summary.get("status"))
