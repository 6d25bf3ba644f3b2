"""Reliability at the edges (issue 13, classes 2, 3, 4, 9 and 11): one writer per sweep folder and per
run folder, workers that die with their sweep, resumes that continue the same run, data files that are
not what they claim, and consistent exits.

Processes are real: ``python -m cnnlab.cli`` subprocesses, real locks held by other processes, real
SIGKILLs. How many hostile inputs were tried (and handled as the contract says) is printed at the end
of the module and stored in pytest's cache (``.pytest_cache/v/cnnlab/reliability``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnnlab import runs
from conftest import cnnlab_here as cnnlab, print_summary_line

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "recipes" / "quickstart_lenet5_mnist.yaml"
TINY = ["data.train_limit=300", "data.val_size=300", "train.epochs=1", "train.batch_size=100",
        "train.progress=false", "train.threads=1", "model.activation=relu"]
COUNTS = {"hostile_inputs": 0, "handled": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    print_summary_line(request, f"reliability: {COUNTS['hostile_inputs']} hostile inputs tried, "
                                f"{COUNTS['handled']} handled as the contract says", "cnnlab/reliability", COUNTS)


def hostile(ok: bool) -> None:
    COUNTS["hostile_inputs"] += 1
    COUNTS["handled"] += bool(ok)
    assert ok


def spawn(*args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, CNNLAB_NO_REEXEC="1", PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *map(str, args)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(")")[-1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != runs.LOCK_NAME}


def one_line_error(err: str) -> bool:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("cnnlab: error:") and "Traceback" not in err


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root) -> Path:
    """A tiny finished run (3 steps, constant learning rate) to resume with changes."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cnnlab("train", STUDY, "--out", out, *TINY, "sched.name=none") == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


# ============================================================================= class 4: resume means the same run


def test_resume_treats_key_value_as_overrides_and_records_the_change(run_copy, capsys):
    before = runs.read_json(run_copy / "summary.json")
    assert cnnlab("train", "--resume", run_copy, "train.epochs=2", "train.eval_every=2") == 0
    after = runs.read_json(run_copy / "summary.json")
    assert after["time"]["steps"] == 2 * before["time"]["steps"]  # it trained on, from where it stopped
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["train"]["epochs"] == 2
    assert after["config"]["train"]["epochs"] == 2
    assert after["resumed"] == [{"step": before["time"]["steps"],
                                 "changes": {"train.epochs": [1, 2], "train.eval_every": [0, 2]}}]
    assert "resume changes: train.epochs 1 → 2" in capsys.readouterr().out


def test_resume_with_the_same_config_records_nothing(run_copy):
    assert cnnlab("train", "--resume", run_copy) == 0
    assert runs.read_json(run_copy / "summary.json")["resumed"] == []


REFUSED = [  # (overrides or config.yaml edits, the field that must be named)
    (["optim.lr=0.1"], "optim.lr"),
    (["data.train_limit=200"], "data.train_limit"),
    (["model.dropout=0.5"], "model.dropout"),
    (["seed=3"], "seed"),
    (["train.batch_size=50"], "train.batch_size"),
    (["sched.name=exponential"], "sched.name"),
    (["data.augment.flip=true"], "data.augment.flip"),
    (["train.precision=bf16"], "train.precision"),
    (["loss.label_smoothing=0.1"], "loss.label_smoothing"),
    (["train.epochs=0.5"], "train.epochs"),  # a resume may extend a run, not shorten it
    (["optim.lr=0.1", "data.train_limit=100"], "optim.lr"),  # several: each one named
]


@pytest.mark.parametrize("overrides,field", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
@pytest.mark.parametrize("how", ["override", "edited config.yaml"])
def test_resume_refuses_any_other_change_naming_old_and_new(run_copy, capsys, overrides, field, how):
    before = hashes(run_copy)
    if how == "override":
        rc = cnnlab("train", "--resume", run_copy, *overrides)
    else:
        from cnnlab.config.schema import apply_overrides

        raw = yaml.safe_load((run_copy / "config.yaml").read_text())
        (run_copy / "config.yaml").write_text(yaml.safe_dump(apply_overrides(raw, overrides)))
        before = hashes(run_copy)
        rc = cnnlab("train", "--resume", run_copy)
    err = capsys.readouterr().err
    names = [o.split("=")[0] for o in overrides if not o.startswith("sched.step_size")]
    hostile(rc == 2 and all(f"{n}:" in err for n in names) and "in the checkpoint" in err)
    assert hashes(run_copy) == before  # nothing trained, nothing rewritten


def test_extending_a_cosine_schedule_is_refused(tmp_path, data_root, capsys):
    out = tmp_path / "cos"
    assert cnnlab("train", STUDY, "--out", out, *TINY, "sched.name=cosine") == 0
    capsys.readouterr()
    hostile(cnnlab("train", "--resume", out, "train.epochs=2") == 2)
    assert "spans the whole run" in capsys.readouterr().err


def test_resume_refuses_a_study_file_in_place_of_overrides(run_copy, capsys):
    hostile(cnnlab("train", "--resume", run_copy, STUDY) == 2)
    assert "key=value overrides" in capsys.readouterr().err


def test_an_override_is_never_taken_for_the_study_path(capsys):
    hostile(cnnlab("train", "train.epochs=1") == 2)
    err = capsys.readouterr().err
    assert "needs a study file" in err and "no such file" not in err


# ============================================================================= class 2: one writer per folder


def _hold_lock(folder: Path, name: str, log: Path) -> subprocess.Popen:
    code = (f"import sys, time; from cnnlab.runs import FolderLock; FolderLock({str(folder)!r}, {name!r}).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    wait_for(lambda: b"held" in log.read_bytes() or proc.poll() is not None, 120, "the lock holder")
    assert proc.poll() is None, log.read_text()
    return proc


def test_a_run_folder_held_by_another_process_is_refused_naming_it(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    holder = _hold_lock(out, runs.LOCK_NAME, tmp_path / "holder.log")
    try:
        for args in (["train", STUDY, "--out", out, *TINY], ["train", STUDY, "--out", out, *TINY, "--force"]):
            rc = cnnlab(*args)
            err = capsys.readouterr().err
            hostile(rc == 2 and f"process {holder.pid}" in err and one_line_error(err))
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cnnlab("train", STUDY, "--out", out, *TINY) == 0  # the kernel dropped the lock with its holder


def _sweep_file(tmp_path: Path, lrs=(0.001, 0.002), epochs: float = 1) -> Path:
    study = yaml.safe_load(STUDY.read_text())
    study.setdefault("train", {}).update(epochs=epochs, batch_size=100, progress=False, threads=1)
    study.setdefault("data", {}).update(train_limit=300, val_size=300)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(study))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "axes": {"optim.lr": list(lrs)}}))
    return path


@pytest.mark.slow
def test_a_second_sweep_on_the_same_folder_refuses_or_waits(tmp_path, data_root):
    sweep, out = _sweep_file(tmp_path), tmp_path / "out"
    first = spawn("sweep", sweep, "--out", out, log=tmp_path / "first.log")
    try:
        wait_for(lambda: runs.is_locked(out, ".sweep.lock") or first.poll() is not None, 300, "the first sweep")
        second = subprocess.run([sys.executable, "-m", "cnnlab.cli", "sweep", sweep, "--out", out], cwd=REPO,
                                capture_output=True, text=True, env=dict(os.environ, CNNLAB_NO_REEXEC="1"))
        if first.poll() is None:  # still running when the second one asked (almost always)
            hostile(second.returncode == 2 and f"process {first.pid}" in second.stderr
                    and one_line_error(second.stderr))
        waiter = spawn("sweep", sweep, "--out", out, "--wait", log=tmp_path / "waiter.log")
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
        assert waiter.wait(timeout=600) == 0, (tmp_path / "waiter.log").read_text()
    finally:
        first.kill()
    rows = runs.read_jsonl(out / "results.jsonl")
    hostile(len(rows) == 2 and len({r["run_id"] for r in rows}) == 2)  # no run trained twice, no spurious row
    for r in rows:
        steps = [m["step"] for m in runs.read_jsonl(out / r["run_dir"] / "metrics.jsonl")]
        assert steps == sorted(set(steps))  # not doubled
    assert "0 to run" in (tmp_path / "waiter.log").read_text()


def test_sweep_out_pointing_at_a_file_is_one_line_exit_2(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    hostile(cnnlab("sweep", _sweep_file(tmp_path), "--out", target) == 2)
    assert one_line_error(capsys.readouterr().err) and target.read_text() == "x"


# ============================================================================= class 3: workers die with their sweep


@pytest.mark.slow
def test_workers_end_when_their_sweep_is_killed(tmp_path, data_root):
    sweep, out = _sweep_file(tmp_path, lrs=(0.001, 0.002, 0.003, 0.004), epochs=30), tmp_path / "out"
    proc = spawn("sweep", sweep, "--out", out, "--workers", "2", log=tmp_path / "sweep.log")
    try:
        # both workers busy training: each has written its run folder's config.yaml
        wait_for(lambda: len(list(out.glob("runs/*/config.yaml"))) >= 2 or proc.poll() is not None, 600,
                 "two runs in training")
        workers = [c for c in children(proc.pid) if "multiprocessing" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) >= 2, workers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    hostile(not any(alive(w) for w in workers))
    for d in out.glob("runs/*"):  # no process holds a run folder any more: a re-run can take them at once
        assert not runs.is_locked(d)


def test_the_parent_watchdog_alone_ends_an_orphan(tmp_path):
    """Where prctl is missing (not Linux) the watchdog thread must do it: pretend not to be on Linux."""
    code_child = ("import os, sys, time; from cnnlab.sweeps.local import die_with_parent; sys.platform = 'darwin'; "
                  "die_with_parent(os.getppid(), poll_s=0.1); print('ready', flush=True); time.sleep(120)")
    code_parent = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
                   "print(c.pid, flush=True); time.sleep(120)")
    log = tmp_path / "parent.log"
    with open(log, "wb") as f:
        parent = subprocess.Popen([sys.executable, "-c", code_parent, code_child], cwd=REPO, stdout=f,
                                  stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        wait_for(lambda: b"ready" in log.read_bytes(), 120, "the child")
        child = int(log.read_text().split()[0])
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    hostile(not alive(child))


# ============================================================================= class 9: data that is not official


@pytest.fixture(scope="module")
def mnist_copy(tmp_path_factory, data_root) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    src = data_root / "MNIST" / "raw"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        f = src / name if (src / name).exists() else src / f"{name}.gz"
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        (root / "MNIST" / "raw" / name).write_bytes(data)
    return root


def _change_one_byte(root: Path, name: str, where: str, gz: bool) -> Path:
    path = root / "MNIST" / "raw" / name
    data = bytearray(path.read_bytes())
    i = {"pixel": len(data) // 2, "last": len(data) - 1, "label": 8 + 17}[where]
    data[i] = (data[i] + 1) % (10 if "labels" in name else 256)
    if gz:
        path.unlink()
        path = path.with_name(name + ".gz")
        path.write_bytes(gzip.compress(bytes(data)))
    else:
        path.write_bytes(bytes(data))
    return path


MODIFIED = [("train-images-idx3-ubyte", "pixel", False), ("t10k-images-idx3-ubyte", "last", False),
            ("train-labels-idx1-ubyte", "label", False), ("t10k-labels-idx1-ubyte", "label", True),
            ("train-images-idx3-ubyte", "last", True)]


@pytest.mark.parametrize("name,where,gz", MODIFIED)
def test_an_mnist_file_with_one_byte_changed_is_refused(mnist_copy, tmp_path, name, where, gz):
    from cnnlab import data
    from cnnlab.data import DataError

    root = tmp_path / "root"
    shutil.copytree(mnist_copy, root)
    path = _change_one_byte(root, name, where, gz)
    with pytest.raises(DataError) as e:
        data.load_raw({"name": "mnist", "root": str(root)})
    hostile(str(path) in str(e.value) and "allow_modified" in str(e.value))
    raw = data.load_raw({"name": "mnist", "root": str(root), "allow_modified": True})
    assert raw.source.startswith("modified") and name in raw.source


def test_modified_mnist_exits_2_or_trains_saying_modified(mnist_copy, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(mnist_copy, root)
    path = _change_one_byte(root, "train-images-idx3-ubyte", "pixel", False)
    rc = cnnlab("train", STUDY, "--out", tmp_path / "r1", *TINY, f"data.root={root}")
    err = capsys.readouterr().err
    hostile(rc == 2 and str(path) in err and one_line_error(err))
    assert cnnlab("train", STUDY, "--out", tmp_path / "r2", *TINY, f"data.root={root}",
                  "data.allow_modified=true") == 0
    source = runs.read_json(tmp_path / "r2" / "summary.json")["data_source"]
    assert "modified" in source and "official" not in source.split("(")[0]


def test_the_official_files_say_md5_checked(mnist_copy):
    from cnnlab import data

    t0 = time.perf_counter()
    raw = data.load_raw({"name": "mnist", "root": str(mnist_copy)})
    assert raw.source.startswith("official IDX files") and "MD5 checked" in raw.source
    assert time.perf_counter() - t0 < 30  # the check hashes bytes already in memory


# ============================================================================= class 11: consistent exits


def test_out_pointing_at_a_file_is_one_line_exit_2(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    for args in (["train", STUDY, "--out", target, *TINY], ["train", "--resume", target]):
        rc = cnnlab(*args)
        err = capsys.readouterr().err
        hostile(rc == 2 and one_line_error(err) and "Errno" not in err)
    assert target.read_text() == "keep me"


def _image_tree(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), 40 * i + (c == "b") * 100).save(root / split / c / f"{i}.png")
    return root


LOOPS = ["folder links to itself", "class folder links to its parent", "image links to itself",
         "two links point at each other"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_symlink_loop_in_a_data_folder_is_one_line_exit_2(tmp_path, capsys, loop, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = _image_tree(tmp_path / "imgs")
    if loop == "folder links to itself":
        os.symlink("cyc", root / "train" / "cyc")
    elif loop == "class folder links to its parent":
        os.symlink("..", root / "train" / "a" / "up")
        os.symlink("x.png", root / "train" / "a" / "x.png")
    elif loop == "image links to itself":
        os.symlink("loop.png", root / "train" / "a" / "loop.png")
    else:
        os.symlink("q.png", root / "test" / "b" / "p.png")
        os.symlink("p.png", root / "test" / "b" / "q.png")
    rc = cnnlab("train", STUDY, "--out", tmp_path / "run", *TINY, "data.name=imagefolder", f"data.root={root}",
                "data.val_size=1", "data.train_limit=null", "train.epochs=0.01")
    err = capsys.readouterr().err
    # an unreadable entry is named (exit 2); a loop that is no image is skipped and the run goes on (0)
    hostile(rc == 0 or (rc == 2 and one_line_error(err) and "Errno" not in err))


TEXTS = {"text": b"hello, this is not a checkpoint\n", "empty": b"", "json": b'{"model": {}}',
         "pickle-like text": b"cos\nsystem\n(S'echo hi'\ntR.", "yaml": b"model: {fc.weight: [1, 2]}\n",
         "truncated zip": b"PK\x03\x04" + b"\x00" * 20, "random bytes": bytes(range(256)) * 4}


@pytest.mark.parametrize("kind", list(TEXTS))
@pytest.mark.parametrize("where", ["model.weights_path", "model.init_from", "--resume last.pt", "eval best.pt"])
def test_a_file_that_is_no_checkpoint_is_named_so(finished, tmp_path, capsys, kind, where):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(TEXTS[kind])
    if where.startswith("model."):
        rc = cnnlab("train", STUDY, "--out", tmp_path / "run", *TINY, f"{where}={bad}")
    else:
        run = tmp_path / "run"
        shutil.copytree(finished, run)
        (run / ("last.pt" if "resume" in where else "best.pt")).write_bytes(TEXTS[kind])
        rc = cnnlab(*(["train", "--resume", run] if "resume" in where else ["eval", run]))
    out = capsys.readouterr()
    text = out.err + out.out
    said = "not a checkpoint" in text if kind != "truncated zip" else "truncated or corrupted" in text
    hostile(rc == 2 and said and "weights_only" not in text and "could run code" not in text
            and "Traceback" not in text)


@pytest.mark.parametrize("leftovers", [("config.yaml",), ("config.yaml", "train.log"),
                                       ("config.yaml", "metrics.jsonl", "train.log"), (runs.LOCK_NAME,)])
@pytest.mark.parametrize("how", ["same command", "--resume"])
def test_a_rerun_after_a_kill_before_the_first_checkpoint_just_works(tmp_path, data_root, leftovers, how):
    out = tmp_path / "run"
    out.mkdir()
    from cnnlab.config.load import load_config
    from cnnlab.config.schema import dump_yaml

    for name in leftovers:
        text = dump_yaml(load_config(STUDY, TINY)) if name == "config.yaml" else ""
        (out / name).write_text(text)
    args = ["train", "--resume", out] if how == "--resume" else ["train", STUDY, "--out", out, *TINY]
    if how == "--resume" and "config.yaml" not in leftovers:  # no config to resume with: refused, exit 2
        hostile(cnnlab(*args) == 2)
        return
    hostile(cnnlab(*args) == 0)
    assert runs.read_json(out / "summary.json")["status"] == "completed"


def test_a_real_kill_before_the_first_checkpoint_then_the_same_command(tmp_path, data_root):
    out = tmp_path / "run"
    args = ["train", STUDY, "--out", out, *TINY]
    proc = spawn(*args, log=tmp_path / "log")
    wait_for(lambda: (out / "config.yaml").exists() or proc.poll() is not None, 300, "config.yaml")
    if (out / "last.pt").exists() or proc.poll() is not None:
        pytest.skip("the run got past its first checkpoint before the kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hostile(cnnlab(*args) == 0)


def test_a_too_long_widths_names_model_widths(capsys):
    rc = cnnlab("train", STUDY, "model.widths=[6,16,32,64,128,256,512,1024]", "train.epochs=0")
    err = capsys.readouterr().err
    hostile(rc == 2 and "model.widths" in err and "data.name" not in err)


@pytest.mark.parametrize("shape", ["two files", "self", "three files", "a chain into a cycle"])
def test_a_cycle_of_sweep_base_files_names_the_files(tmp_path, capsys, shape):
    names = {"two files": ["a", "b"], "self": ["a"], "three files": ["a", "b", "c"],
             "a chain into a cycle": ["a", "b", "c", "b"]}[shape]
    chain = names if shape != "a chain into a cycle" else ["a", "b", "c"]
    nxt = {"a chain into a cycle": {"a": "b", "b": "c", "c": "b"}}.get(shape) or \
        {n: chain[(i + 1) % len(chain)] for i, n in enumerate(chain)}
    for n in chain:
        (tmp_path / f"{n}.yaml").write_text(yaml.safe_dump({"base": f"{nxt[n]}.yaml", "axes": {"optim.lr": [0.1]}}))
    rc = cnnlab("sweep", tmp_path / "a.yaml", "--dry-run")
    err = capsys.readouterr().err
    hostile(rc == 2 and "cycle" in err and all(f"{n}.yaml" in err for n in chain) and one_line_error(err))
