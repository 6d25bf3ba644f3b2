"""Faults never lose work and untrusted files never run code.

Everything here is real: runs on the real MNIST files, real subprocesses of
``python -m cnnlab.cli`` killed with real SIGINT / SIGKILL signals (also while a
checkpoint is being written), a real full disk (a small tmpfs, or RLIMIT_FSIZE
where mounting is not allowed), real corrupted data files and checkpoints, and
pickles that would create a marker file if anything unpickled them.

What is compared after a kill and a resume: the summary's train / val / test
metrics and best epoch, every learning-curve row (except its wall-clock time) and
the tensors in ``last.pt`` / ``best.pt``, against an uninterrupted run with the same
seed, bit for bit (CPU, one thread). How many kill points were tried and resumed
identically, and how many concurrent appends were checked, is printed at the end
of the module and stored in pytest's cache (``.pytest_cache/v/cnnlab/faults``).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab import runs
from conftest import cnnlab_here as cnnlab, print_summary_line

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "recipes" / "quickstart_lenet5_mnist.yaml"
# 10 steps an epoch, 2 epochs, a checkpoint every 5 steps. Dropout, flips and a per-step cosine
# schedule make every random stream matter for the result. One thread: the same numbers in a
# subprocess and in pytest's process, and less fighting over a busy machine's cores.
TINY = ["data.train_limit=500", "data.val_size=500", "train.epochs=2", "train.batch_size=50",
        "train.eval_every=5", "train.progress=false", "optim.lr=0.005", "model.dropout=0.3",
        "model.activation=relu", "data.augment.flip=true", "sched.name=cosine", "sched.interval=step",
        "train.threads=1", "seed=7"]
STEPS = 20
CHECKPOINT_STEPS = [5, 10, 15, 20]

COUNTS = {"kill_points_tried": 0, "kill_points_resumed_identically": 0, "concurrent_appends_checked": 0,
          "concurrent_writers": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    line = ("faults: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in COUNTS.items()))
    print_summary_line(request, line, "cnnlab/faults", COUNTS)


# ----------------------------------------------------------------------------- helpers


def spawn(*args, log: Path, preexec_fn=None) -> subprocess.Popen:
    """``python -m cnnlab.cli ARGS`` as a real process, its output in ``log`` (a pipe could fill up)."""
    env = dict(os.environ, CNNLAB_NO_REEXEC="1", PYTHONUNBUFFERED="1")
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *map(str, args)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    finally:
        out.close()


def tmp_files(run_dir: Path, target: str | None = None) -> set[str]:
    """Names of the temporary files cnnlab writes before renaming (``.last.pt.x1y2.tmp``)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return set()
    prefix = f".{target}." if target else "."
    return {n for n in names if n.startswith(prefix) and n.endswith(".tmp")}


def metrics_rows(run_dir: Path) -> int:
    return len(runs.read_jsonl(run_dir / "metrics.jsonl"))


def kill_when(proc: subprocess.Popen, condition, timeout: float = 600, poll: float = 0.0005) -> bool:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; True if the signal is what ended it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False  # it finished before the moment came
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("the kill point never came")
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def assert_nothing_half_written(run_dir: Path) -> None:
    """After a kill every file a reader opens is whole: JSON parses, checkpoints load (CRC checked)."""
    if not run_dir.exists():
        return
    if (run_dir / "config.yaml").exists():
        assert isinstance(yaml.safe_load((run_dir / "config.yaml").read_text()), dict)
    if (run_dir / "summary.json").exists():
        assert "status" in json.loads((run_dir / "summary.json").read_text())
    if (run_dir / "metrics.jsonl").exists():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        for line in lines[:-1]:  # only the last line may be torn by a kill in the middle of an append
            assert "step" in json.loads(line)
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).exists():
            assert "model" in runs.load_checkpoint(run_dir / name)


def resume_to_the_end(run_dir: Path, capsys=None) -> None:
    """What a user does after a crash: ``--resume``; where no checkpoint was written yet,
    ``--resume`` refuses (exit 2) and the run starts over with ``--force``."""
    if (run_dir / "last.pt").exists():
        assert cnnlab("train", "--resume", run_dir) == 0
    else:
        assert cnnlab("train", "--resume", run_dir) == 2
        if capsys is not None:
            err = capsys.readouterr().err
            assert "last.pt" in err or "config.yaml" in err, err
        assert cnnlab("train", STUDY, *TINY, "--out", run_dir, "--force") == 0
    assert not tmp_files(run_dir), f"temporary files left behind: {tmp_files(run_dir)}"


def _tensors_equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _tensors_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical results: summary metrics, learning curve, checkpoint tensors."""
    sa, sb = runs.read_json(a / "summary.json"), runs.read_json(b / "summary.json")
    for key in ("status", "best", "train", "val", "test", "final_train_loss", "classes"):
        assert sa.get(key) == sb.get(key), f"summary.{key} differs"
    assert sa["time"]["steps"] == sb["time"]["steps"] == STEPS

    def curve(d):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in runs.read_jsonl(d / "metrics.jsonl")]

    assert curve(a) == curve(b)
    assert [r["step"] for r in curve(b)] == CHECKPOINT_STEPS
    for name in ("last.pt", "best.pt"):
        ca, cb = runs.load_checkpoint(a / name), runs.load_checkpoint(b / name)
        assert ca["step"] == cb["step"]
        _tensors_equal(ca["model"], cb["model"], f"{name}:model")
        _tensors_equal(ca["optimizer"], cb["optimizer"], f"{name}:optimizer")
        _tensors_equal(ca["rng"], cb["rng"], f"{name}:rng")


def file_hashes(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> Path:
    """One uninterrupted run of TINY: what every interrupted and resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cnnlab("train", STUDY, *TINY, "--out", out) == 0
    assert runs.read_json(out / "summary.json")["status"] == "completed"
    return out


@pytest.fixture
def finished_run(reference, tmp_path) -> Path:
    """A private copy of the reference run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    return copy


# ----------------------------------------------------------------------------- same seed, same run


def test_same_seed_gives_the_same_run_twice(reference, tmp_path):
    again = tmp_path / "again"
    assert cnnlab("train", STUDY, *TINY, "--out", again) == 0
    assert_same_run(reference, again)


# ----------------------------------------------------------------------------- signals


def test_sigint_saves_last_pt_and_resumes_identically(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = spawn("train", STUDY, *TINY, "--out", run_dir, log=tmp_path / "log.txt")
    deadline = time.monotonic() + 600
    while metrics_rows(run_dir) < 1:  # the first checkpoint is written: training is under way
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=600) == 1, (tmp_path / "log.txt").read_text()
    summary = runs.read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted" and "SIGINT" in summary["error"]
    last = runs.load_checkpoint(run_dir / "last.pt")
    assert 5 <= last["step"] < STEPS and last["step"] == summary["time"]["steps"]
    assert not tmp_files(run_dir)
    assert_nothing_half_written(run_dir)

    resume_to_the_end(run_dir, capsys)
    assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_sigterm_is_an_interruption_too(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = spawn("train", STUDY, *TINY, "--out", run_dir, log=tmp_path / "log.txt")
    while metrics_rows(run_dir) < 2:
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 1
    summary = runs.read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    resume_to_the_end(run_dir, capsys)
    assert_same_run(reference, run_dir)


def _nth_new_tmp(run_dir: Path, target: str, n: int):
    """A condition that holds once the n-th distinct temporary file of ``target`` has appeared."""
    seen: set[str] = set()

    def condition() -> bool:
        seen.update(tmp_files(run_dir, target))
        return len(seen) >= n

    return condition


def test_sigkill_while_a_checkpoint_is_written(reference, tmp_path, capsys):
    """The fast version of the kill matrix below: one kill in the middle of writing last.pt."""
    run_dir = tmp_path / "run"
    proc = spawn("train", STUDY, *TINY, "--out", run_dir, log=tmp_path / "log.txt")
    killed = kill_when(proc, _nth_new_tmp(run_dir, "last.pt", 2))
    assert killed, "the run ended before its second checkpoint"
    COUNTS["kill_points_tried"] += 1
    assert runs.load_checkpoint(run_dir / "last.pt")["step"] == 5  # the old checkpoint, whole
    assert_nothing_half_written(run_dir)
    resume_to_the_end(run_dir, capsys)
    assert_same_run(reference, run_dir)
    COUNTS["kill_points_resumed_identically"] += 1


# Kill points, in chains: each kill ends one process; the next process of the chain (a fresh
# start where no last.pt exists yet, else --resume) is killed at the chain's next point, and the
# last one is left to finish. Then the run must equal the reference.
def _after_delay(seconds):
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 >= seconds


def _file_appears(run_dir: Path, name: str):
    return lambda: (run_dir / name).exists()


def _rows_grow(run_dir: Path, by: int):
    start = metrics_rows(run_dir)
    return lambda: metrics_rows(run_dir) >= start + by


def _rows_then_delay(run_dir: Path, seconds: float):
    start, when = metrics_rows(run_dir), []

    def condition():
        if not when and metrics_rows(run_dir) > start:
            when.append(time.monotonic())
        return bool(when) and time.monotonic() - when[0] >= seconds

    return condition


KILL_CHAINS = {
    "early": [  # before and during the first checkpoints: --resume refuses, the run starts over
        ("while starting up", lambda d, rng: _after_delay(rng.uniform(0.5, 4.0))),
        ("config.yaml written", lambda d, rng: _file_appears(d, "config.yaml")),
        ("writing the first best.pt", lambda d, rng: _nth_new_tmp(d, "best.pt", 1)),
        ("writing the first last.pt", lambda d, rng: _nth_new_tmp(d, "last.pt", 1)),
        ("metrics row appended, checkpoint not yet", lambda d, rng: _rows_grow(d, 2)),
    ],
    "middle": [  # during training and checkpoint writes of resumed processes
        ("writing the 2nd last.pt", lambda d, rng: _nth_new_tmp(d, "last.pt", 2)),
        # Delays stay short: on a quiet machine the 20 tiny steps take well under a second, and a
        # kill after the last checkpoint would leave the resumed runs that follow nothing to train.
        ("mid-training, random delay", lambda d, rng: _rows_then_delay(d, rng.uniform(0.0, 0.02))),
        ("writing a resumed run's last.pt", lambda d, rng: _nth_new_tmp(d, "last.pt", 1)),
        ("resumed run, random delay after start", lambda d, rng: _after_delay(rng.uniform(1.0, 3.0))),
    ],
    "end": [  # after training: while scoring, writing summary.json, plots and the report
        ("writing summary.json", lambda d, rng: _nth_new_tmp(d, "summary.json", 1)),
        ("summary.json written, plots not yet", lambda d, rng: _file_appears(d, "summary.json")),
        # a file that appears is a sure kill point; a temporary file of a fast write can be missed
        ("curves.png written, report not yet", lambda d, rng: _file_appears(d, "curves.png")),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("chain", list(KILL_CHAINS))
def test_sigkill_at_many_points_then_resume_is_bit_identical(reference, tmp_path, capsys, chain):
    # Seeded delays: a failure replays with the same kill points (CNNLAB_KILL_SEED picks others).
    seed = f"{chain}-{os.environ.get('CNNLAB_KILL_SEED', '0')}"
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    tried = []
    for i, (label, make_condition) in enumerate(KILL_CHAINS[chain]):
        if (run_dir / "last.pt").exists():
            args = ["train", "--resume", run_dir]
        else:  # nothing to resume: start over, as resume_to_the_end does
            args = ["train", STUDY, *TINY, "--out", run_dir, "--force"]
        proc = spawn(*args, log=tmp_path / f"log{i}.txt")
        if kill_when(proc, make_condition(run_dir, rng)):
            tried.append(label)
            COUNTS["kill_points_tried"] += 1
        else:
            assert proc.returncode == 0, (tmp_path / f"log{i}.txt").read_text()
        assert_nothing_half_written(run_dir)
    resume_to_the_end(run_dir, capsys)
    assert_same_run(reference, run_dir)
    COUNTS["kill_points_resumed_identically"] += len(tried)
    print(f"chain {chain} (delay seed {seed!r}): killed {len(tried)} times: {tried}")
    assert len(tried) >= len(KILL_CHAINS[chain]) - 1, f"too many kill points missed: only {tried}"


# ----------------------------------------------------------------------------- a finished run is kept


def test_a_finished_run_is_never_overwritten_without_force(finished_run, capsys):
    before = file_hashes(finished_run)
    assert cnnlab("train", STUDY, *TINY, "--out", finished_run) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "finished run" in err and str(finished_run) in err
    assert file_hashes(finished_run) == before
    # another study into the same folder is refused as well
    assert cnnlab("train", STUDY, "data.train_limit=100", "--out", finished_run) == 2
    assert file_hashes(finished_run) == before


def test_an_interrupted_run_is_not_overwritten_either(finished_run, capsys):
    summary = runs.read_json(finished_run / "summary.json")
    runs.write_json(finished_run / "summary.json", {**summary, "status": "interrupted"})
    before = file_hashes(finished_run)
    assert cnnlab("train", STUDY, *TINY, "--out", finished_run) == 2
    assert "unfinished run" in capsys.readouterr().err
    assert file_hashes(finished_run) == before


@pytest.mark.slow
def test_force_replaces_only_cnnlabs_own_files(finished_run, reference):
    (finished_run / "notes.txt").write_text("my notes")
    (finished_run / "extra").mkdir()
    assert cnnlab("train", STUDY, *TINY, "--out", finished_run, "--force") == 0
    assert (finished_run / "notes.txt").read_text() == "my notes" and (finished_run / "extra").is_dir()
    assert_same_run(reference, finished_run)


# ----------------------------------------------------------------------------- untrusted checkpoints


class _Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil_checkpoint(path: Path, marker: Path) -> None:
    state = {"model": {"fc.weight": torch.zeros(2, 2)}, "step": 1, "payload": _Payload(marker)}
    torch.save(state, path, pickle_module=pickle)


def test_the_evil_checkpoint_really_is_evil(tmp_path):
    # Without weights_only the payload runs: the tests below would otherwise prove nothing.
    write_evil_checkpoint(tmp_path / "evil.pt", tmp_path / "proof")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "proof").exists()


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped byte":  # inside a tensor: torch.load alone would not notice
        i = data.index(b"archive/data/0") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
    elif how == "random bytes":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "text":
        path.write_text("this is not a checkpoint\n")
    elif how == "a list":
        torch.save([torch.zeros(3)], path)
    elif how == "another program's state dict":  # a plain state dict: loads, but is no run checkpoint
        torch.save({"fc.weight": torch.zeros(10, 84)}, path)
    else:
        raise AssertionError(how)


DAMAGES = ["truncated", "empty", "flipped byte", "random bytes", "text", "a list", "another program's state dict"]


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_refuses_a_damaged_last_pt(finished_run, capsys, how):
    _damage(finished_run / "last.pt", how)
    before = file_hashes(finished_run)
    assert cnnlab("train", "--resume", finished_run) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "Traceback" not in err, err
    assert file_hashes(finished_run) == before  # nothing was rewritten on the way to the refusal


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "text", "another program's state dict"])
def test_eval_refuses_a_damaged_best_pt(finished_run, capsys, how):
    _damage(finished_run / "best.pt", how)
    assert cnnlab("eval", finished_run) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "Traceback" not in err, err


def _other_architecture_checkpoint(path: Path, reference: Path) -> None:
    """A well-formed cnnlab checkpoint, but of an MLP (another network)."""
    from cnnlab.models.mlp import mlp

    net = mlp(hidden=(32,))
    net(torch.zeros(1, 1, 28, 28))  # size the lazy first layer
    state = runs.load_checkpoint(reference / "last.pt")
    state["model"] = net.state_dict()
    state["config"]["model"]["name"] = "mlp"
    runs.save_checkpoint(path, state)


def test_a_checkpoint_of_another_architecture_is_refused(finished_run, reference, tmp_path, capsys):
    _other_architecture_checkpoint(finished_run / "best.pt", reference)
    _other_architecture_checkpoint(finished_run / "last.pt", reference)
    before = file_hashes(finished_run)
    assert cnnlab("eval", finished_run) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "Traceback" not in err, err
    assert cnnlab("train", "--resume", finished_run) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "Traceback" not in err, err
    assert file_hashes(finished_run) == before

    out = tmp_path / "from-mlp"  # model.init_from a run folder / a file of another network
    for source in (finished_run, finished_run / "last.pt"):
        assert cnnlab("train", STUDY, *TINY, f"model.init_from={source}", "--out", out) == 2
        err = capsys.readouterr().err
        assert "model.init_from" in err or "does not fit" in err, err
        assert not out.exists()


@pytest.mark.parametrize("where", ["last.pt for --resume", "best.pt for eval", "init_from a file",
                                   "init_from a run folder", "weights_path"])
def test_a_checkpoint_that_would_run_code_is_refused(finished_run, tmp_path, capsys, where):
    marker = tmp_path / "PWNED"
    out = tmp_path / "new-run"
    if where == "last.pt for --resume":
        write_evil_checkpoint(finished_run / "last.pt", marker)
        code = cnnlab("train", "--resume", finished_run)
    elif where == "best.pt for eval":
        write_evil_checkpoint(finished_run / "best.pt", marker)
        code = cnnlab("eval", finished_run)
    else:
        evil = finished_run / "best.pt" if where == "init_from a run folder" else tmp_path / "evil.pt"
        write_evil_checkpoint(evil, marker)
        field = "model.weights_path" if where == "weights_path" else "model.init_from"
        source = finished_run if where == "init_from a run folder" else evil
        code = cnnlab("train", STUDY, *TINY, f"{field}={source}", "--out", out)
        assert not out.exists()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and ("refused" in err or "cannot load" in err or "cannot read" in err), err
    assert not marker.exists(), "unpickling ran code from the file"


def test_a_corrupt_image_folder_cache_is_rebuilt_and_never_unpickled(tmp_path):
    """The decoded-image cache is a .pt file too: damaged or evil, it is ignored and rebuilt."""
    from cnnlab import data

    root = _tiny_image_folder(tmp_path / "images")
    first = data.load_raw({"name": "imagefolder", "root": str(root)})
    assert first.cache_path is not None and not first.from_cache
    cache = first.cache_path
    expected = first.train_x.clone()  # loads map the cache file: keep the images apart from it
    marker = tmp_path / "PWNED"
    for damage in ("truncated", "evil"):
        # the damaged file replaces the cache (a new inode, as any writer that renames into place), so the
        # pages of the earlier loads' maps stay valid; writing into a mapped file in place would SIGBUS them
        damaged = tmp_path / "damaged.pt"
        if damage == "truncated":
            damaged.write_bytes(cache.read_bytes()[:100])
        else:
            write_evil_checkpoint(damaged, marker)
        os.replace(damaged, cache)
        again = data.load_raw({"name": "imagefolder", "root": str(root)})
        assert not again.from_cache and torch.equal(again.train_x, expected)
        assert runs.load_checkpoint(cache)["fingerprint"]  # rebuilt whole
        assert not marker.exists()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".tmp")]


def _tiny_image_folder(root: Path) -> Path:
    import warnings

    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                with warnings.catch_warnings():  # torchvision 0.29 announces torchcodec on every call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    write_png(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g),
                              str(root / split / c / f"{i}.png"))
    return root


# ----------------------------------------------------------------------------- damaged data files


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def _damaged_mnist(root: Path, data_root: Path, damage: str) -> str:
    """An MNIST root of symlinks to the real files, one of them damaged; returns that file's name."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).symlink_to(data_root / "MNIST" / "raw" / name)
    real = (data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    target = "t10k-labels-idx1-ubyte"
    (raw / target).unlink()
    if damage == "missing":
        return target
    if damage == "wrong magic":
        body = _idx(0x00000803, (10000,), real[8:])  # an image-file magic on a label file
    elif damage == "shorter than its header":
        body = real[:5]
    elif damage == "truncated":
        body = real[:5000]
    elif damage == "longer than its header says":
        body = real + b"\x00" * 10
    elif damage == "count disagrees with the images":
        body = _idx(0x00000801, (9999,), real[8:-1])
    elif damage == "label out of range":
        body = real[:8] + bytes([42]) + real[9:]
    elif damage == "a truncated .gz":
        target += ".gz"
        import gzip

        body = gzip.compress(real)[:3000]
    elif damage == "a .gz that is not gzip":
        target += ".gz"
        body = real
    else:
        raise AssertionError(damage)
    (raw / target).write_bytes(body)
    return target


DATA_DAMAGES = ["missing", "wrong magic", "shorter than its header", "truncated", "longer than its header says",
                "count disagrees with the images", "label out of range", "a truncated .gz", "a .gz that is not gzip"]


@pytest.mark.parametrize("damage", DATA_DAMAGES)
def test_damaged_mnist_files_give_a_clear_error_and_leave_nothing(tmp_path, data_root, capsys, damage):
    root = tmp_path / "data"
    name = _damaged_mnist(root, data_root, damage)
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    out = tmp_path / "run"
    assert cnnlab("train", STUDY, *TINY, f"data.root={root}", "data.download=false", "--out", out) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, "one paragraph"
    assert not out.exists()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == listing, "files appeared in the data root"


def test_cifar_python_batches_that_would_run_code_are_refused(tmp_path, capsys):
    """Fake ``cifar-10-batches-py`` files, one a pickle with a payload: the MD5 check stops them."""
    from torchvision.datasets import CIFAR10

    root = tmp_path / "data"
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    for name, _ in CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], None]]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _Payload(marker), "labels": [0]}, f)
    (folder / "data_batch_3").write_bytes(b"\x80\x04not a pickle at all")
    out = tmp_path / "run"
    code = cnnlab("train", STUDY, *TINY, "data.name=cifar10", "model.name=lenet5_cifar", "data.val_size=100",
                  f"data.root={root}", "data.download=false", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and str(folder) in err and "Traceback" not in err, err
    assert not marker.exists() and not out.exists()
    assert not (root / ".cnnlab-cache").exists()


def test_a_corrupt_image_in_an_image_folder_names_the_file(tmp_path, capsys):
    root = _tiny_image_folder(tmp_path / "images")
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a PNG cut short
    out = tmp_path / "run"
    code = cnnlab("train", STUDY, *TINY, "data.name=imagefolder", f"data.root={root}", "data.val_size=2",
                  "data.train_limit=4", "model.name=mlp", "model.pooling=null", "--out", out)
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Traceback" not in err, err
    assert not out.exists()
    assert not (root / ".cnnlab-cache").exists() or not any((root / ".cnnlab-cache").iterdir()), \
        "a partial cache was left behind"


# ----------------------------------------------------------------------------- a full disk, a read-only folder


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (needs root); yields a function ``mount(size_bytes) -> Path``."""
    mounted: list[Path] = []

    def mount(size: int, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the RLIMIT_FSIZE test covers a full disk")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


CHECKPOINT_BYTES_SLACK = 400_000  # config, metrics, summary, plots and report fit in this


def test_a_full_disk_fails_clearly_and_keeps_the_last_checkpoint(reference, tmpfs, tmp_path, capsys):
    ckpt = (reference / "last.pt").stat().st_size
    # best.pt + last.pt of the first evaluation fit; the third checkpoint file of the second does not.
    disk = tmpfs(2 * ckpt + CHECKPOINT_BYTES_SLACK)
    run_dir = disk / "run"
    assert cnnlab("train", STUDY, *TINY, "--out", run_dir) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(run_dir) in err and "Traceback" not in err, err
    assert not tmp_files(run_dir)
    last = runs.load_checkpoint(run_dir / "last.pt")
    assert last["step"] == 5  # the last good checkpoint is intact
    summary = runs.read_json(run_dir / "summary.json")
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]

    # Once there is room again, nothing was lost: resume and get the uninterrupted result.
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    resume_to_the_end(moved, capsys)
    assert_same_run(reference, moved)


def test_append_jsonl_on_a_full_disk_raises_instead_of_tearing_lines(tmpfs):
    disk = tmpfs(64 * 1024)
    path = disk / "metrics.jsonl"
    runs.append_jsonl(path, {"step": 1, "pad": "x" * 3900})
    filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(filler)
    with pytest.raises(OSError, match="No space left on device"):
        runs.append_jsonl(path, {"step": 2, "pad": "y" * 500})  # fits only in part
    assert [r["step"] for r in runs.read_jsonl(path)] == [1]


def test_a_read_only_run_folder_can_be_evaluated_but_not_written(finished_run, tmpfs, tmp_path, capsys):
    disk = tmpfs(8 * 1024 * 1024)
    run_dir = disk / "run"
    shutil.copytree(finished_run, run_dir)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    else:  # pragma: no cover - the tmpfs fixture needs root anyway
        os.chmod(run_dir, 0o555)
    before = file_hashes(run_dir)
    assert cnnlab("eval", run_dir) == 0  # reading needs no write access
    capsys.readouterr()
    assert cnnlab("train", "--resume", run_dir) == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and str(run_dir) in err and "Traceback" not in err, err
    assert cnnlab("train", STUDY, *TINY, "--out", disk / "new") == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err, err
    assert file_hashes(run_dir) == before and not (disk / "new").exists()


@pytest.mark.slow
def test_file_size_limit_fails_clearly_and_keeps_the_checkpoint(reference, tmp_path, capsys):
    """Where no tmpfs can be mounted: RLIMIT_FSIZE below a checkpoint's size makes the next
    checkpoint write fail (EFBIG), as a quota or a full disk would."""
    run_dir = tmp_path / "run"
    proc = spawn("train", STUDY, *TINY, "--out", run_dir, log=tmp_path / "first.txt")
    assert kill_when(proc, lambda: metrics_rows(run_dir) >= 2), (tmp_path / "first.txt").read_text()
    COUNTS["kill_points_tried"] += 1
    last_before = (run_dir / "last.pt").read_bytes()
    assert runs.load_checkpoint(run_dir / "last.pt")["step"] < STEPS
    limit = (reference / "last.pt").stat().st_size // 2

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = spawn("train", "--resume", run_dir, log=tmp_path / "log.txt", preexec_fn=limit_file_size)
    assert proc.wait(timeout=600) == 1
    log = (tmp_path / "log.txt").read_text()
    assert "File too large" in log and "cnnlab: error:" in log and "Traceback" not in log, log[-3000:]
    assert (run_dir / "last.pt").read_bytes() == last_before  # the last good checkpoint, untouched
    assert not tmp_files(run_dir)
    summary = runs.read_json(run_dir / "summary.json")
    assert summary["status"] == "failed" and "File too large" in summary["error"]
    resume_to_the_end(run_dir, capsys)  # without the limit nothing is lost
    assert_same_run(reference, run_dir)
    COUNTS["kill_points_resumed_identically"] += 1


# ----------------------------------------------------------------------------- concurrent writers


def _append_many(path: str, writer: int, rows: int, via: str) -> None:
    if via == "sweep":
        from cnnlab.reporting.results import append_row as append
    else:
        append = runs.append_jsonl
    rng = random.Random(writer)
    for i in range(rows):
        # sizes from a few bytes to well over a page, so a torn or interleaved write would show
        append(Path(path), {"run_id": f"w{writer}-{i}", "writer": writer, "i": i,
                            "pad": "x" * rng.choice([0, 10, 3000, 9000])})


@pytest.mark.parametrize("via", ["runs.append_jsonl", "sweep"])
def test_concurrent_appenders_lose_nothing(tmp_path, via):
    if via == "sweep":
        pytest.importorskip("cnnlab.sweeps.run")
    path = tmp_path / "results.jsonl"
    writers, rows = 6, 150
    ctx = multiprocessing.get_context("fork")  # real processes; the appenders use no torch
    procs = [ctx.Process(target=_append_many, args=(str(path), w, rows, via)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line whole
    ids = [r["run_id"] for r in parsed]
    assert len(ids) == len(set(ids)) == writers * rows
    for w in range(writers):  # each writer's rows in its own order
        assert [r["i"] for r in parsed if r["writer"] == w] == list(range(rows))
    COUNTS["concurrent_appends_checked"] += len(ids)
    COUNTS["concurrent_writers"] += writers


# ----------------------------------------------------------------------------- sweeps


def _sweep_file(tmp_path: Path, axes: dict, seeds=1) -> Path:
    base = yaml.safe_load(STUDY.read_text())
    for item in TINY:
        key, value = item.split("=", 1)
        node = base
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": base, "axes": axes, "seeds": seeds}))
    return path


def _results(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["during the second run", "right after the first row"])
def test_a_killed_sweep_rerun_ends_with_one_row_per_run(tmp_path, data_root, when):
    pytest.importorskip("cnnlab.sweeps.run")
    sweep = _sweep_file(tmp_path, {"optim.lr": [0.003, 0.005, 0.01]})
    out = tmp_path / "sweep"
    proc = spawn("sweep", sweep, "--out", out, log=tmp_path / "log.txt")
    if when == "during the second run":
        condition = lambda: (out / "results.jsonl").exists() and any(  # noqa: E731
            len(tmp_files(d, "last.pt")) for d in (out / "runs").iterdir())
    else:
        condition = lambda: (out / "results.jsonl").exists() and len(_results(out)) >= 1  # noqa: E731
    assert kill_when(proc, condition)
    COUNTS["kill_points_tried"] += 1
    assert cnnlab("sweep", sweep, "--out", out) == 0
    rows = _results(out)
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 3, ids  # none lost, none twice
    assert all(r["status"] == "completed" for r in rows)
    for r in rows:
        summary = runs.read_json(out / r["run_dir"] / "summary.json")
        assert summary["test"]["accuracy"] == r["test"]["accuracy"]
    COUNTS["kill_points_resumed_identically"] += 1
    assert cnnlab("sweep", sweep, "--out", out) == 0  # a third time: all done, nothing added
    assert len(_results(out)) == 3


@pytest.mark.slow
def test_a_diverging_run_does_not_stop_the_sweep(tmp_path, data_root):
    pytest.importorskip("cnnlab.sweeps.run")
    sweep = _sweep_file(tmp_path, {"zip": [{"optim.name": ["sgd", "adam"], "optim.lr": [50.0, 0.005]}]})
    out = tmp_path / "sweep"
    assert cnnlab("sweep", sweep, "--out", out) == 0
    rows = {r["settings"]["optim.name"]: r for r in _results(out)}
    assert rows["sgd"]["status"] == "diverged" and rows["adam"]["status"] == "completed"
    assert rows["adam"]["test"]["accuracy"] > 0.3  # 20 steps: far above chance (0.1)
