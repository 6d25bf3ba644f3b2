"""Reliability of the data layer (issue 28): files a user points at, files a user edits, and commands that must
never destroy a run.

Everything is real: named pipes (``os.mkfifo``), Unix sockets, a link to ``/dev/zero``, folder names whose bytes are
not UTF-8, decompression bombs, ``python -m cnnlab.cli`` subprocesses killed with SIGKILL and interrupted with SIGINT,
folders made unreadable (with the permission override dropped when the tests run as root). How many hostile inputs
were tried (and handled as the contract says) is printed at the end of the module and stored in pytest's cache
(``.pytest_cache/v/cnnlab/data_hostile``).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import runs
from cnnlab.data import DataError
from conftest import cnnlab_here as cnnlab, print_summary_line

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "recipes" / "quickstart_lenet5_mnist.yaml"
FOLDER_RUN = ["data.name=imagefolder", "data.train_limit=null", "data.val_size=2", "train.epochs=1",
              "train.batch_size=8", "train.progress=false", "train.threads=1", "train.precision=fp32",
              "model.activation=relu"]
COUNTS = {"hostile_inputs": 0, "handled": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    print_summary_line(request, f"data layer (issue 28): {COUNTS['hostile_inputs']} hostile inputs tried, "
                                f"{COUNTS['handled']} handled as the contract says", "cnnlab/data_hostile", COUNTS)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def hostile(ok: bool, what: str = "") -> None:
    COUNTS["hostile_inputs"] += 1
    COUNTS["handled"] += bool(ok)
    assert ok, what


def one_line_error(err: str) -> bool:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("cnnlab: error:") and "Traceback" not in err


def env() -> dict:
    return dict(os.environ, CNNLAB_NO_REEXEC="1", PYTHONUNBUFFERED="1")


def run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab.cli", *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def _sigint_as_in_a_terminal() -> None:
    # A shell that started the tests in the background (nohup, `cmd &` in a script) ignores SIGINT, and children
    # inherit that: Python then never raises KeyboardInterrupt. The command a user runs gets Ctrl-C by default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *map(str, args)], cwd=REPO, env=env(),
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_sigint_as_in_a_terminal)


def wait_for(condition, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != runs.LOCK_NAME}


def flat_tree(root: Path, classes=("a", "b"), per_class: int = 6, size: int = 28) -> Path:
    """root/<class>/<class>_<i>.png, grey, each class its own brightness (a model can tell them apart)."""
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 160 * k
            a = np.clip(base + rng.integers(-30, 30, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{c}_{i}.png")
    return root


def split_tree(root: Path, classes=("a", "b"), per_class: int = 4) -> Path:
    for split in ("train", "test"):
        flat_tree(root / split, classes, per_class)
    return root


def load(root: Path, **options):
    from cnnlab import data

    return data.load_imagefolder(root, **options)


# ============================================================================= class 2: special files never block


def _special_files(folder: Path) -> list[str]:
    """A named pipe, a Unix socket and a link to /dev/zero, all named like images; returns their names."""
    os.mkfifo(folder / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.jpg"))
    sock.close()
    os.symlink("/dev/zero", folder / "zero.png")
    return ["pipe.png", "sock.jpg", "zero.png"]


def test_special_files_in_class_folders_are_skipped_and_counted(tmp_path):
    """In a subprocess with a timeout: were a pipe opened, the load would block forever."""
    root = flat_tree(tmp_path / "imgs")
    names = _special_files(root / "a")
    os.mkfifo(root / "b" / "pipe2.bmp")
    code = ("import sys; from cnnlab import data; raw = data.load_imagefolder(sys.argv[1]); "
            "print(len(raw.train_y)); print(raw.source)")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, env=env(), capture_output=True,
                           text=True, timeout=120)
    except subprocess.TimeoutExpired:
        r = None
    hostile(r is not None and r.returncode == 0, "the load blocked or failed")
    n, source = r.stdout.splitlines()[:2]
    assert n == "12" and "4 files that are not images skipped" in source
    assert all(name in source for name in ["pipe.png", "pipe2.bmp", "sock.jpg"][:3])
    for name in names:
        assert (root / "a" / name).exists() or os.path.islink(root / "a" / name)  # left where they were


def test_a_named_pipe_in_a_class_folder_trains_to_the_end(tmp_path):
    root = flat_tree(tmp_path / "imgs")
    os.mkfifo(root / "a" / "x.png")
    try:
        r = run_cli("train", STUDY, "--out", tmp_path / "run", *FOLDER_RUN, f"data.root={root}", timeout=300)
    except subprocess.TimeoutExpired:
        r = None
    hostile(r is not None and r.returncode == 0, r and r.stderr[-2000:])
    assert "1 file that are not images skipped (x.png)" in r.stdout


def test_a_named_pipe_given_to_predict_is_skipped_and_the_good_images_predicted(tiny_run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((28, 28), 30, np.uint8)).save(good)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out = tmp_path / "p.csv"
    try:
        r = run_cli("predict", tiny_run.dir, fifo, good, "--out", out, timeout=300)
    except subprocess.TimeoutExpired:
        r = None
    hostile(r is not None and r.returncode == 0 and "named pipe" in r.stderr and "Traceback" not in r.stderr,
            r and r.stderr[-2000:])
    assert str(good) in out.read_text() and str(fifo) not in out.read_text()
    from cnnlab.inference.load import load_run

    with pytest.raises(DataError, match="named pipe"):  # the API names it too
        load_run(tiny_run.dir).predict([fifo])


def _many_big_images(root: Path, per_class: int) -> Path:
    """Two classes of 1024x1024 PNGs (decoded, then resized to 28: a few ms each), for a data load that lasts."""
    a = (np.add.outer(np.arange(1024), np.arange(1024)) % 256).astype(np.uint8)
    for k, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        Image.fromarray(a if k == 0 else 255 - a).save(root / c / "0.png")
        data = (root / c / "0.png").read_bytes()
        for i in range(1, per_class):
            (root / c / f"{i}.png").write_bytes(data)
    return root


def _reading_an_image(pid: int, root: Path) -> bool:
    """Whether the process has one of root's images open now (the decoding has begun)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)) and target.endswith(".png"):
            return True
    return False


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_a_run_killed_or_interrupted_while_decoding_leaves_no_blocking_lock(tmp_path, sig):
    root = _many_big_images(tmp_path / "imgs", 1500)
    out = tmp_path / "run"
    args = ["train", STUDY, "--out", out, *FOLDER_RUN, f"data.root={root}", "data.resize=28"]
    log = tmp_path / "log"
    proc = spawn(*args, log=log)
    try:
        wait_for(lambda: (out / runs.LOCK_NAME).exists() or proc.poll() is not None, 300, "the run's lock")
        wait_for(lambda: _reading_an_image(proc.pid, root) or proc.poll() is not None, 300, "the decoding")
        if proc.poll() is not None or any((tmp_path / "cache").rglob("*.pt")):
            pytest.skip("the data was loaded before the signal")
        proc.send_signal(getattr(signal, sig))
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    if sig == "SIGINT":  # Ctrl-C while decoding: one line, exit 130, nothing trained
        hostile(rc == 130 and text.strip().splitlines()[-1] == "cnnlab: interrupted" and "Traceback" not in text,
                text[-3000:])
    else:
        hostile(rc == -signal.SIGKILL)
    assert not runs.is_locked(out) and not (out / "config.yaml").exists()
    r = run_cli(*args, timeout=600)  # the next run is not blocked
    hostile(r.returncode == 0, r.stderr[-2000:])


# ============================================================================= class 3: one paragraph, not a traceback


def test_a_class_folder_whose_name_is_not_utf8_is_one_paragraph(tmp_path, capsys):
    root = flat_tree(tmp_path / "imgs")
    bad = os.fsencode(root) + b"/caf\xe9"
    os.rename(os.fsencode(root / "b"), bad)
    with pytest.raises(DataError) as e:
        load(root)
    hostile("caf\\xe9" in str(e.value) and "UTF-8" in str(e.value))
    rc = cnnlab("train", STUDY, "--out", tmp_path / "run", *FOLDER_RUN, f"data.root={root}")
    err = capsys.readouterr().err
    hostile(rc == 2 and one_line_error(err) and "caf\\xe9" in err)
    assert not (tmp_path / "run" / "config.yaml").exists()
    # an image file so named is refused the same way
    os.rename(bad, os.fsencode(root / "b"))
    os.rename(os.fsencode(root / "b" / "b_0.png"), os.fsencode(root / "b") + b"/\xff\xfe.png")
    with pytest.raises(DataError) as e:
        load(root)
    hostile("\\xff\\xfe.png" in str(e.value))


@pytest.mark.parametrize("how", ["no class folders", "class folders without images", "every test image bad"])
def test_an_empty_test_split_is_refused_before_training(tmp_path, capsys, how):
    root = split_tree(tmp_path / "imgs")
    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    extra = []
    if how == "class folders without images":
        (root / "test" / "a").mkdir()
        (root / "test" / "a" / "notes.txt").write_text("x")
    elif how == "every test image bad":
        (root / "test" / "a").mkdir()
        (root / "test" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        extra = ["data.skip_bad_images=true"]
    t0 = time.perf_counter()
    rc = cnnlab("train", STUDY, "--out", tmp_path / "run", *FOLDER_RUN, f"data.root={root}", *extra)
    err = capsys.readouterr().err
    hostile(rc == 2 and one_line_error(err) and "test" in err, err)
    assert not (tmp_path / "run" / "config.yaml").exists() and time.perf_counter() - t0 < 60


def test_a_decompression_bomb_given_to_predict_is_skipped_with_the_good_images_kept(tiny_run, tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"  # 30000 x 30000 grey: 900 M pixels claimed in 60 bytes
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    good = tmp_path / "good.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(good)
    r = run_cli("predict", tiny_run.dir, bomb, good, timeout=300)
    hostile(r.returncode == 0 and "bomb.png" in r.stderr and "Traceback" not in r.stderr and "good.png" in r.stdout,
            r.stderr[-2000:])


# ============================================================================= class 4: splits.json checked on every load


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny finished run on a flat image folder (root/a, root/b): its splits.json lists every split's files."""
    base = tmp_path_factory.mktemp("folder_run")
    root = flat_tree(base / "imgs", per_class=10)
    assert cnnlab("train", STUDY, "--out", base / "run", *FOLDER_RUN, f"data.root={root}") == 0
    return base / "run", root


def _edit(record: dict, how: str, root: Path):
    f = record["files"]
    if how == "not JSON":
        return b'{"files": [1, 2'
    if how == "binary garbage":
        return bytes(range(256))
    if how == "a list":
        return [f["train"], f["test"]]
    if how == "files missing":
        return {k: v for k, v in record.items() if k != "files"}
    if how == "a test file added to train":
        f["train"].append(f["test"][0])
    elif how == "train and test swapped":
        f["train"], f["test"] = f["test"], f["train"]
    elif how == "a file listed 20 times":
        f["train"] += [f["train"][0]] * 19
    elif how == "a path outside data.root":
        f["train"][0] = ["../outside/a_0.png", f["train"][0][1]]
    elif how == "an absolute path":
        f["train"][0] = [str(root / f["train"][0][0]), f["train"][0][1]]
    elif how == "a file in another class":
        f["train"][0] = [f["train"][0][0], 1 - f["train"][0][1]]
    elif how == "a class index out of range":
        f["train"][0] = [f["train"][0][0], 7]
    elif how == "an empty test list":
        f["test"] = []
    elif how == "classes reordered":
        record["classes"] = record["classes"][::-1]
    elif how == "an entry that is no pair":
        f["val"].append("a/a_1.png")
    return record


EDITS = ["not JSON", "binary garbage", "a list", "files missing", "a test file added to train",
         "train and test swapped", "a file listed 20 times", "a path outside data.root", "an absolute path",
         "a file in another class", "a class index out of range", "an empty test list", "classes reordered",
         "an entry that is no pair", "a named pipe", "a folder"]


@pytest.mark.parametrize("how", EDITS)
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_damaged_or_edited_splits_json_is_one_paragraph_exit_2(folder_run, tmp_path, capsys, how, command):
    src, root = folder_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    path = run / "splits.json"
    if how == "a named pipe":
        path.unlink()
        os.mkfifo(path)
    elif how == "a folder":
        path.unlink()
        path.mkdir()
    else:
        edited = _edit(json.loads(path.read_text()), how, root)
        path.write_bytes(edited if isinstance(edited, bytes) else json.dumps(edited).encode())
    before = hashes(run)
    args = ["eval", run] if command == "eval" else ["train", "--resume", run, "train.epochs=2"]
    rc = cnnlab(*args)
    err = capsys.readouterr().err
    hostile(rc == 2 and one_line_error(err) and "splits.json" in err, err)
    assert hashes(run) == before  # nothing trained, nothing rewritten


def test_a_listed_file_that_is_gone_is_named(folder_run, tmp_path, capsys):
    src, root = folder_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    gone = json.loads((run / "splits.json").read_text())["files"]["test"][0][0]
    os.rename(root / gone, tmp_path / "away.png")
    try:
        rc = cnnlab("eval", run)
    finally:
        os.rename(tmp_path / "away.png", root / gone)
    err = capsys.readouterr().err
    hostile(rc == 2 and gone in err and one_line_error(err), err)


def test_class_folders_renamed_after_training_are_refused(tmp_path, capsys):
    root = split_tree(tmp_path / "imgs", per_class=4)
    run = tmp_path / "run"
    assert cnnlab("train", STUDY, "--out", run, *FOLDER_RUN, f"data.root={root}") == 0
    capsys.readouterr()
    for split in ("train", "test"):  # a -> z: the sorted classes become b, z (the labels would be permuted)
        os.rename(root / split / "a", root / split / "z")
    rc = cnnlab("eval", run)
    err = capsys.readouterr().err
    hostile(rc == 2 and one_line_error(err) and "a, b" in err and "b, z" in err, err)


# ============================================================================= class 4: the decoded cache


def test_a_cache_file_that_fails_its_checksum_is_rebuilt(tmp_path):
    root = flat_tree(tmp_path / "imgs")
    first = load(root)
    expect = first.train_x.clone()
    path = first.cache_path
    st = path.stat()
    data = bytearray(path.read_bytes())
    # a byte inside the pixel data (the tensors are the bulk of the file), size and mtime kept
    i = data.find(expect.numpy().tobytes()[:64])
    assert i > 0
    data[i + 10] ^= 0xFF
    del first
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load(root)
    hostile(not again.from_cache and torch.equal(again.train_x, expect))
    assert load(root).from_cache  # the rebuilt file is used


def test_a_well_formed_cache_with_changed_labels_is_not_trusted(tmp_path):
    from cnnlab.data import cache

    root = flat_tree(tmp_path / "imgs")
    first = load(root)
    expect = first.train_y.clone()
    blob = dict(torch.load(first.cache_path, weights_only=True))
    blob["all_y"] = 1 - blob["all_y"]  # every label flipped, checksums made to match: a hostile, well-formed file
    blob["checksums"] = cache.checksums({k: v for k, v in blob.items() if k != "checksums"})
    torch.save(blob, first.cache_path)
    again = load(root)
    hostile(not again.from_cache and torch.equal(again.train_y, expect))
    blob = dict(torch.load(again.cache_path, weights_only=True))
    blob["classes"] = ["b", "a"]  # classes swapped
    blob["checksums"] = cache.checksums({k: v for k, v in blob.items() if k != "checksums"})
    torch.save(blob, again.cache_path)
    third = load(root)
    hostile(not third.from_cache and third.classes == ["a", "b"] and torch.equal(third.train_y, expect))


def test_data_verify_content_sees_pixels_changed_with_size_and_mtime_kept(tmp_path):
    root = flat_tree(tmp_path / "imgs")
    load(root)
    f = root / "a" / "a_0.png"
    st = f.stat()
    a = np.asarray(Image.open(f)).copy()
    a[0, 0] ^= 0x01  # one pixel, one bit: PNG of the same size, almost surely
    Image.fromarray(a).save(f)
    if f.stat().st_size != st.st_size:
        pytest.skip("the edited PNG changed size")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load(root).from_cache  # stat: size and mtime kept, the cache is used (documented)
    raw = load(root, verify="content")
    hostile(not raw.from_cache and int(raw.train_x[0, 0, 0, 0]) == int(a[0, 0]))
    assert load(root, verify="content").from_cache
    rc = cnnlab("train", STUDY, "--out", tmp_path / "r", *FOLDER_RUN, f"data.root={root}", "data.verify=sha")
    hostile(rc == 2)


def test_a_cache_write_killed_leaves_a_tmp_the_next_run_removes(tmp_path):
    from cnnlab.data import cache

    decoded = tmp_path / "cache" / "decoded"
    code = ("import torch; from pathlib import Path; from cnnlab.data import cache; "
            "cache.decoded_dir().mkdir(parents=True, exist_ok=True); "
            "cache.write_atomic(cache.decoded_dir() / 'big.pt', {'x': torch.ones(400_000_000, dtype=torch.uint8)})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env())
    try:
        wait_for(lambda: any(decoded.glob(".*.tmp")) or proc.poll() is not None, 120, "the temporary file")
        if proc.poll() is not None:
            pytest.skip("the write ended before the kill")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    left = list(decoded.glob(".*.tmp"))
    assert left and not (decoded / "big.pt").exists()
    # a live writer's temporary file (locked by another process) is left alone
    live = decoded / ".other.pt.abc.tmp"
    live.write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(live)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        root = flat_tree(tmp_path / "imgs")
        load(root)  # a later run
        hostile(not any(p.exists() for p in left) and live.exists())
    finally:
        holder.kill()
        holder.wait()
    assert cache.remove_stale_temporaries() == [live] and not live.exists()


# ============================================================================= class 4: what is a class, what is data


def test_a_link_loop_in_the_root_is_no_class(tmp_path):
    root = flat_tree(tmp_path / "imgs")
    os.symlink(".", root / "loop")
    os.symlink("..", root / "a" / "up")
    os.symlink("b", root / "bee")  # a second name for a class: its images would count twice
    raw = load(root)
    hostile(raw.classes == ["a", "b"] and len(raw.train_y) == 12 and "links to folders already read" in raw.source,
            raw.source)
    outside = flat_tree(tmp_path / "elsewhere", classes=("c",))
    os.symlink(outside / "c", root / "c")  # a link to a class folder kept elsewhere is a class
    assert load(root).classes == ["a", "b", "c"]


def test_hidden_class_folders_are_counted_on_the_data_line(tmp_path):
    root = flat_tree(tmp_path / "imgs")
    flat_tree(root / ".git", classes=("objects",))
    (root / ".ipynb_checkpoints").mkdir()
    raw = load(root)
    hostile(raw.classes == ["a", "b"] and "2 hidden folders skipped (.git, .ipynb_checkpoints)" in raw.source,
            raw.source)


def _unreadable(folder: Path):
    folder.chmod(0)


def test_an_unreadable_subfolder_is_counted_and_reported(tmp_path):
    root = flat_tree(tmp_path / "imgs")
    flat_tree(root / "a" / "private", classes=("x",))
    _unreadable(root / "a" / "private")
    code = ("import sys; from cnnlab import data\n"
            "try:\n    raw = data.load_imagefolder(sys.argv[1]); print(len(raw.train_y)); print(raw.source)\n"
            "except data.DataError as e:\n    print('DataError'); print(e)")
    cmd = [sys.executable, "-c", code, str(root)]
    if os.geteuid() == 0:  # root reads anything: drop the permission override, as a user has none
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", "--bounding-set", drop, "--inh-caps", drop, *cmd]
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    finally:
        (root / "a" / "private").chmod(0o755)
    n, source = r.stdout.splitlines()[:2]
    hostile(n == "12" and "1 unreadable folder skipped (a/private)" in source, r.stdout + r.stderr)
    # an unreadable class folder itself: named, one paragraph
    _unreadable(root / "b")
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    finally:
        (root / "b").chmod(0o755)
    hostile(r.stdout.startswith("DataError") and str(root / "b") in r.stdout, r.stdout + r.stderr)
    # an unreadable data.root: named as the root, not as a train/ inside it
    _unreadable(root)
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    finally:
        root.chmod(0o755)
    hostile(r.stdout.startswith("DataError") and f"{root} (data.root itself)" in r.stdout, r.stdout + r.stderr)


def test_a_run_written_inside_the_data_root_is_never_read_as_data(tmp_path, capsys):
    root = flat_tree(tmp_path / "imgs", per_class=8)
    args = ["train", STUDY, *FOLDER_RUN, f"data.root={root}"]
    assert cnnlab(*args, "--out", root / "runs" / "first") == 0  # scanned while its own folder held only the lock
    assert (root / "runs" / "first" / "curves.png").exists()
    capsys.readouterr()
    assert cnnlab(*args, "--out", root / "b" / "second") == 0  # inside a class folder, even
    out = capsys.readouterr().out
    data_line = next(line for line in out.splitlines() if line.startswith("data:"))
    hostile("cnnlab run or sweep folder" in data_line and "runs" in data_line, data_line)
    record = json.loads((root / "b" / "second" / "splits.json").read_text())
    assert record["classes"] == ["a", "b"]
    assert not any("first" in p or "second" in p for v in record["files"].values() for p, _ in v)


# ============================================================================= class 4: the preprocessing record, one decode


def test_16_bit_pngs_decode_as_their_8_bit_twins_in_training_and_predict(tiny_run, tmp_path):
    from cnnlab.data.decode import Decode, decode_file
    from cnnlab.inference.load import load_run

    rng = np.random.default_rng(3)
    a8 = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    a16 = a8.astype(np.uint16) * 257
    eight, sixteen = tmp_path / "t8" / "x" / "0.png", tmp_path / "t16" / "x" / "0.png"
    for p, a in ((eight, a8), (sixteen, a16)):
        p.parent.mkdir(parents=True)
        Image.fromarray(a).save(p)
        (p.parent.parent / "y").mkdir()
        Image.fromarray(a).save(p.parent.parent / "y" / "0.png")
    assert Image.open(sixteen).mode.startswith("I")
    hostile(np.array_equal(decode_file(sixteen), decode_file(eight)))
    hostile(np.array_equal(decode_file(sixteen, Decode.of(14)), decode_file(eight, Decode.of(14))))
    run = load_run(tiny_run.dir)
    p8, p16 = run.predict([eight, sixteen])
    hostile(p8["top"] == p16["top"])
    assert torch.equal(run.transform.read(sixteen), run.transform.read(eight))
    # training reads the same pixels predict reads
    t8, t16 = load(tmp_path / "t8"), load(tmp_path / "t16")
    assert torch.equal(t8.train_x, t16.train_x) and torch.equal(t16.train_x[0, 0], torch.from_numpy(a8))
    assert torch.equal(run.transform.read(eight)[0], t8.train_x[0, 0])


def _edit_checkpoint(run: Path, change) -> None:
    path = run / "best.pt"
    state = torch.load(path, weights_only=True)
    change(state["preprocess"])
    torch.save(state, path)


PREPROCESS = {
    "std of 0": lambda p: p.update(std=[0.0] * len(p["std"])),
    "negative std": lambda p: p.update(std=[-0.3] * len(p["std"])),
    "mean of the wrong length": lambda p: p.update(mean=p["mean"] * 2),
    "no input_shape": lambda p: p.pop("input_shape"),
    "nan mean": lambda p: p.update(mean=[float("nan")] * len(p["mean"])),
    "input_shape of 2 numbers": lambda p: p.update(input_shape=[28, 28]),
}


@pytest.mark.parametrize("how", list(PREPROCESS))
def test_a_bad_preprocessing_record_is_one_paragraph_exit_2(tiny_run, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    _edit_checkpoint(run, PREPROCESS[how])
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    before = hashes(run)
    rc = cnnlab("predict", run, img)
    err = capsys.readouterr().err
    field = {"std of 0": "std", "negative std": "std", "mean of the wrong length": "mean",
             "no input_shape": "input_shape", "nan mean": "mean", "input_shape of 2 numbers": "input_shape"}[how]
    hostile(rc == 2 and one_line_error(err) and field in err and "preprocess" in err, err)
    assert hashes(run) == before


# ============================================================================= class 1: never write over a run's files


@pytest.mark.parametrize("target", ["best.pt", "last.pt", "summary.json", "config.yaml", "sub/../summary.json",
                                    "a link to best.pt", "a folder", "a missing folder"])
def test_an_out_path_naming_a_run_file_is_refused(tiny_run, tmp_path, capsys, target):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    (run / "sub").mkdir()
    before = hashes(run)
    out = {"a link to best.pt": tmp_path / "link.pt", "a folder": run / "sub",
           "a missing folder": tmp_path / "nowhere" / "x.json"}.get(target, run / target)
    if target == "a link to best.pt":
        os.symlink(run / "best.pt", out)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    commands = [["export", run, "--format", "torchscript", "--out", out]]
    if str(out).endswith(".json") or target == "a folder":
        commands.append(["predict", run, img, "--out", out])
    for args in commands:
        rc = cnnlab(*args)
        err = capsys.readouterr().err
        hostile(rc == 2 and one_line_error(err) and "Errno" not in err, err)
    assert hashes(run) == before


def test_other_out_paths_inside_a_run_folder_are_written(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    before = hashes(run)
    assert cnnlab("predict", run, img, "--out", run / "predictions.csv") == 0
    assert (run / "predictions.csv").exists()
    assert {k: v for k, v in hashes(run).items() if k != "predictions.csv"} == before
