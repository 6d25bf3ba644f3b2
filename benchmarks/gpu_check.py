"""The GPU check: one script a maintainer runs on a machine with one (or two) CUDA GPUs, in under
10 minutes, to see that cnnlab trains right there (issue 17). It records the GPU and the library
versions, runs the CUDA-relevant tests, trains the quick start (recipes/quickstart_lenet5_mnist.yaml,
shortened) at fp32 / bf16 / fp16 with and without EMA while counting the host-device syncs per
training step (``torch.cuda.set_sync_debug_mode``; evaluation points excluded), interrupts a run
with SIGINT and resumes it (weights compared with an uninterrupted run), resumes a CPU-made
checkpoint on the GPU, trains a 224-px network under an 8 GB memory fraction (a laptop card),
checks that two local sweep workers land on different GPUs when there are two, trains the quick start
with the compiled step (``train.compile``: CUDA graphs on a GPU; no recompile allowed, compile time
apart, accuracy against the eager step) and records the TF32 decision for this GPU (``train.tf32``:
auto). It prints one table.

Without CUDA it says so, runs the device-independent part on the CPU (host reads of tensors
counted instead of syncs) and exits 0 when that passes; ``--quick`` (what CI runs, through
tests/test_gpu_check.py) keeps to the smallest runs and skips the test suite (and, on a CPU, the
compiled step: compiling takes minutes on a small CPU; tests/test_step.py's slow test covers it).
The two-worker row runs everywhere: with fewer than two GPUs it checks the assignment alone (two
made-up GPU names, one per worker), through the pool `cnnlab sweep --workers 2` uses.

    .venv/bin/python benchmarks/gpu_check.py [--quick] [--data DIR] [--out DIR] [--keep]

``--data DIR`` sets CNNLAB_DATA for the check (DIR holds MNIST/raw/, uncompressed or .gz); without
MNIST there it stops at once with a paragraph saying where it looked.

Exit code: 0 when every check passed or was skipped, 1 when one failed, 2 when MNIST was not found.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab import runs  # noqa: E402
from cnnlab.training import loop as train  # noqa: E402
from cnnlab.sweeps import local
from cnnlab.config.load import load_config  # noqa: E402
from cnnlab.training.runtime import decide_tf32  # noqa: E402

QUICKSTART = ROOT / "recipes" / "quickstart_lenet5_mnist.yaml"
# CUDA-relevant tests: device handling, resume, determinism, memory, evaluation (CPU-run, but they
# exercise the code paths a GPU takes; on a GPU machine `auto` picks the GPU in the tiny runs)
# the CUDA-relevant tests (test_runtime holds the run that checks train.precision auto on a real GPU)
TESTS = ["tests/test_cuda_ready.py", "tests/test_train.py", "tests/test_evaluate.py", "tests/test_runs.py",
         "tests/test_step.py", "tests/test_runtime_tf32.py", "tests/test_runtime.py"]


def quiet(*_):
    pass


def quickstart(quick: bool, **extra):
    """The quick start, shortened: a few hundred steps on a GPU, a few dozen on a CPU (``--quick``)."""
    size = {"data.train_limit": 600, "data.val_size": 200, "train.epochs": 1, "train.batch_size": 50,
            "train.eval_every": 6} if quick else {"data.train_limit": 20000, "data.val_size": 5000,
                                                   "train.epochs": 2, "train.eval_every": 100}
    return load_config(QUICKSTART, {**size, "train.progress": False, **extra})


# ----------------------------------------------------------------------------- the checks


def environment(cuda: bool) -> list[tuple]:
    rows = [("python / torch", "info", f"{platform.python_version()} / {torch.__version__}")]
    if not cuda:
        return rows + [("GPU", "skipped", "no CUDA device: running the device-independent part on the CPU")]
    p = torch.cuda.get_device_properties(0)
    rows.append(("GPU", "info", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, "
                                f"{torch.cuda.device_count()} visible"))
    rows.append(("CUDA / cuDNN", "info", f"{torch.version.cuda} / {torch.backends.cudnn.version()}; "
                                         f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    return rows


def run_tests() -> tuple:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return ("CUDA-relevant tests", "ok" if done.returncode == 0 else "FAIL",
            f"{last} ({time.perf_counter() - t0:.0f} s)")


def counted_run(cfg, out: Path, cuda: bool) -> tuple[dict, list[int]]:
    """Train ``cfg`` into ``out``; return its summary and the step at which each host-device sync
    (CUDA, ``torch.cuda.set_sync_debug_mode``) or host read of a tensor (CPU, where a GPU would
    sync) happened inside the step loop, evaluation points excluded."""
    state = {"s": None, "eval": False}
    real_loop, real_eval = train.train_loop, train.evaluation_point
    at = []

    def counting() -> bool:
        return state["s"] is not None and not state["eval"]

    def loop(s, stop):
        state["s"] = s
        try:
            return real_loop(s, stop)
        finally:
            state["s"] = None

    def evaluation_point(s):
        state["eval"] = True
        try:
            return real_eval(s)
        finally:
            state["eval"] = False

    patched = [(train, "train_loop", loop), (train, "evaluation_point", evaluation_point)]
    if not cuda:  # a CPU never syncs: count the reads that would sync on a GPU
        from torch.optim.optimizer import _get_value  # foreach optimizers keep step counters on the host

        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            def counted(self, *a, _real=getattr(torch.Tensor, name), **k):
                if counting() and sys._getframe(1).f_code is not _get_value.__code__:
                    at.append(state["s"].progress.step)
                return _real(self, *a, **k)
            patched.append((torch.Tensor, name, counted))
    saved = [(o, n, getattr(o, n)) for o, n, _ in patched]
    for o, n, f in patched:
        setattr(o, n, f)
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning too
            warnings.simplefilter("always")
            if cuda:
                def on_warning(message, *a, **k):
                    if "synchroniz" in str(message) and counting():
                        at.append(state["s"].progress.step)
                warnings.showwarning = on_warning
                torch.cuda.set_sync_debug_mode("warn")
            try:
                summary = train.run(cfg, out, log=quiet)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
    finally:
        for o, n, f in saved:
            setattr(o, n, f)
    return summary, at


def precisions(quick: bool, cuda: bool, work: Path) -> list[tuple]:
    rows = []
    combos = [(p, e) for p in (("fp32", "bf16", "fp16") if cuda else ("fp32",)) for e in (None, 0.99)]
    if quick and not cuda:  # CI: one run, the one with the most to count (EMA with batch norm's counter)
        combos = [("fp32", 0.9)]
    for precision, ema in combos:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            rows.append((f"quick start {precision}", "skipped", "this GPU has no bf16"))
            continue
        cfg = quickstart(quick, **{"train.precision": precision, "train.ema": ema})
        summary, at = counted_run(cfg, work / f"{precision}-{ema}", cuda)
        steps = summary["time"]["steps"]
        # Past the first two steps (state and scaler set-up), what may remain is one read per evaluation
        # point (is the running loss finite?) and one copy of each epoch's permutation to the device.
        allowed = steps // cfg.train.eval_every + 2 * max(1, round(cfg.train.epochs))
        steady = [step for step in at if step >= 2]
        per_step = max(0, len(steady) - allowed) / max(1, steps)
        ok = summary["status"] == "completed" and per_step < 0.1 and summary["test"]["accuracy"] > 0.3
        what = "syncs" if cuda else "host reads"
        rows.append((f"quick start {precision}{' + EMA' if ema else ''}", "ok" if ok else "FAIL",
                     f"test acc {summary['test']['accuracy']:.4f}, {summary['time']['train_images_per_s']:,.0f} img/s, "
                     f"{len(at)} {what} in {steps} steps ({len(steady)} after step 2; "
                     f"{per_step:.2f}/step beyond evaluation points and epochs)"))
    return rows


def interrupted_run(cfg, out: Path, after_evals: int = 1) -> dict:
    """Train until the ``after_evals``-th evaluation point, then SIGINT this process (the trainer
    stops at the next step boundary as 'interrupted' and writes last.pt)."""
    seen = []

    def log(message: str) -> None:
        if message.startswith("step"):
            seen.append(message)
            if len(seen) == after_evals:
                os.kill(os.getpid(), signal.SIGINT)

    return train.run(cfg, out, log=log)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = (runs.load_checkpoint(p / "last.pt")["model"] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def sigint_resume(quick: bool, device: str, work: Path) -> tuple:
    # deterministic on a GPU: bit-identical weights are the claim (an op without a deterministic
    # implementation fails this row with the paragraph naming it)
    cfg = quickstart(quick, **{"train.device": device, "data.augment.flip": True,
                               "train.deterministic": device != "cpu"})
    full = train.run(cfg, work / "full", log=quiet)
    part = interrupted_run(cfg, work / "part")
    step = runs.load_checkpoint(work / "part" / "last.pt")["step"]
    resumed = train.run(load_config(work / "part" / "config.yaml"), work / "part", resume=True, log=quiet)
    ok = (part["status"] == "interrupted" and resumed["status"] == "completed"
          and same_weights(work / "full", work / "part") and full["test"] == resumed["test"])
    return (f"SIGINT + resume ({device})", "ok" if ok else "FAIL",
            f"stopped at step {step}, resumed to {resumed['time']['steps']}; weights "
            f"{'identical' if same_weights(work / 'full', work / 'part') else 'DIFFER'} to an uninterrupted run")


def cpu_checkpoint_on_gpu(quick: bool, work: Path) -> tuple:
    cfg = quickstart(quick, **{"train.device": "cpu"})
    interrupted_run(cfg, work / "cpu-made")
    step = runs.load_checkpoint(work / "cpu-made" / "last.pt")["step"]
    on_gpu = load_config(work / "cpu-made" / "config.yaml", {"train.device": "cuda"})
    summary = train.run(on_gpu, work / "cpu-made", resume=True, log=quiet)
    ok = summary["status"] == "completed" and summary["env"]["device"].startswith("cuda")
    return ("CPU checkpoint resumed on the GPU", "ok" if ok else "FAIL",
            f"CPU stopped at step {step}; GPU finished: {summary['status']}, test acc "
            f"{summary.get('test', {}).get('accuracy', float('nan')):.4f}")


def big_net_in_8gb(quick: bool, work: Path) -> tuple:
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, 8 * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    try:
        cfg = load_config(None, {"data.name": "mnist", "data.train_limit": 256 if quick else 2048,
                                 "data.val_size": 256, "data.resize": 224, "model.name": "resnet50",
                                 "train.epochs": 1, "train.batch_size": 32, "train.precision": "bf16"
                                 if torch.cuda.is_bf16_supported() else "fp16", "train.progress": False})
        t0 = time.perf_counter()
        summary = train.run(cfg, work / "224px", log=quiet)
        peak = torch.cuda.max_memory_allocated() / 2**30  # evaluation halves its batch if it must
        return ("224-px ResNet-50 in 8 GB", "ok" if summary["status"] == "completed" else "FAIL",
                f"{summary['status']} in {time.perf_counter() - t0:.0f} s, peak {peak:.1f} GiB "
                f"(fraction {fraction:.2f} of the card)")
    except Exception as e:  # noqa: BLE001 - a row of the table: the message is the finding
        return ("224-px ResNet-50 in 8 GB", "FAIL", " ".join(str(e).split())[:200])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)


def compiled_step(quick: bool, work: Path) -> tuple:
    """The quick start with the compiled step against the eager one on the same batches (the short last
    batch dropped in both); any recompile (an epoch's last batch, an evaluation) fails the run."""
    import torch._dynamo

    extra = {"train.ema": 0.99, "data.augment.flip": True, "train.drop_last": True}
    eager = train.run(quickstart(quick, **extra), work / "eager", log=quiet)
    torch._dynamo.reset()
    saved = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        done = train.run(quickstart(quick, **extra, **{"train.compile": True}), work / "compiled", log=quiet)
    finally:
        torch._dynamo.config.error_on_recompile = saved
    if done["status"] != "completed":
        return ("compiled step", "FAIL", " ".join(str(done["error"]).split())[:200])
    t, te = done["time"], eager["time"]
    close = abs(done["test"]["accuracy"] - eager["test"]["accuracy"]) <= 0.01
    ok = t["compile_s"] > 0 and close
    return ("compiled step", "ok" if ok else "FAIL",
            f"mode {done['step']['mode']}, compile {t['compile_s']:.1f} s (apart), no recompile; "
            f"{t['train_images_per_s']:,.0f} img/s vs {te['train_images_per_s']:,.0f} eager; test acc "
            f"{done['test']['accuracy']:.4f} vs {eager['test']['accuracy']:.4f} eager")


def tf32_decision(quick: bool, cuda: bool, work: Path) -> tuple:
    """What ``train.tf32: auto`` decides here, as a run records it, and the flags put back after the run."""
    capability = torch.cuda.get_device_capability(0) if cuda else None
    expected = decide_tf32("auto", "fp32", "cuda" if cuda else "cpu", capability)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    summary = train.run(quickstart(True, **{"train.epochs": 0.2}), work, log=quiet)
    after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    got = summary["step"]["tf32"]
    ok = got["on"] is expected and before == after
    where = f"compute capability {got['compute_capability']}" if cuda else "no CUDA device"
    return ("TF32 for fp32 (auto)", "ok" if ok else "FAIL",
            f"{'on' if got['on'] else 'off'} ({where}); flags {'restored' if before == after else 'NOT restored'} "
            "after the run")


def _which_gpu(_: int) -> tuple[int, str]:
    time.sleep(1.0)  # keep this worker busy so the next task goes to the other one
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def workers_on_gpus(cuda: bool) -> tuple:
    """Two local sweep workers, started as `cnnlab sweep --workers 2` starts them (its very pool), report
    their GPU."""
    from cnnlab.training.runtime import visible_gpus

    gpus = visible_gpus() if cuda else ()
    real = len(gpus) > 1
    with local.worker_pool(2, gpus if real else ("0", "1")) as pool:  # without two GPUs: the assignment alone
        got = dict(pool.map(_which_gpu, range(4)))
    ok = len(got) == 2 and len(set(got.values())) == 2
    detail = f"workers see CUDA_VISIBLE_DEVICES {sorted(got.values())}"
    return ("two workers, two GPUs", "ok" if ok else "FAIL",
            detail + ("" if real else " (assignment only: fewer than two GPUs here)"))


# ----------------------------------------------------------------------------- main


def missing_mnist() -> str | None:
    """None when MNIST is where the runs will look for it, else the paragraph that says where that was."""
    from cnnlab.data.common import resolve_root
    from cnnlab.data.sources.idx import FILES, MNIST, find

    root = resolve_root()
    raw = root / MNIST.folder / "raw"
    missing = [name for name in FILES if find(raw, name) is None]
    if not missing:
        return None
    source = ("from --data or $CNNLAB_DATA" if os.environ.get("CNNLAB_DATA")
              else "the default, as neither --data nor $CNNLAB_DATA is set")
    return (f"MNIST not found, and every check trains on it. Looked in {raw} (data root {root}, {source}) "
            f"for the four IDX files {', '.join(FILES)}, uncompressed or .gz: "
            f"{'none is there' if len(missing) == len(FILES) else 'missing ' + ', '.join(missing)}. "
            "Point the check at a folder that holds MNIST/raw/: `benchmarks/gpu_check.py --data DIR`, or "
            "`export CNNLAB_DATA=DIR` (this project's shared copy: ../shared/datasets beside the project; on a "
            "borrowed GPU machine, the GPU kit's data folder: benchmarks/gpu_kit/README.md).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smallest runs, no test suite (what CI runs)")
    ap.add_argument("--out", help="folder for the runs (default: a temporary folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folder")
    ap.add_argument("--data", metavar="DIR", help="data root holding MNIST/raw/ (sets CNNLAB_DATA; "
                                                   "default: $CNNLAB_DATA)")
    args = ap.parse_args(argv)
    if args.data:
        os.environ["CNNLAB_DATA"] = str(Path(args.data).expanduser().resolve())
    missing = missing_mnist()
    if missing:
        print(missing, file=sys.stderr, flush=True)
        return 2
    cuda = torch.cuda.is_available()
    print("CUDA: " + (torch.cuda.get_device_name(0) if cuda else
                      "none. This machine has no CUDA device: running the device-independent checks on the CPU."),
          flush=True)
    work = Path(args.out or tempfile.mkdtemp(prefix="cnnlab-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = environment(cuda)
    checks = [
        ("CUDA-relevant tests", (lambda: [run_tests()]) if not args.quick else "--quick"),
        ("quick start", lambda: precisions(args.quick, cuda, work / "precision")),
        ("SIGINT + resume", lambda: [sigint_resume(args.quick, "cuda" if cuda else "cpu", work / "sigint")]),
        ("CPU checkpoint resumed on the GPU", (lambda: [cpu_checkpoint_on_gpu(args.quick, work / "cross")])
         if cuda else "no CUDA device"),
        ("224-px ResNet-50 in 8 GB", (lambda: [big_net_in_8gb(args.quick, work / "big")])
         if cuda else "no CUDA device"),
        ("two workers, two GPUs", lambda: [workers_on_gpus(cuda)]),  # without two GPUs: cheap (assignment)
        ("TF32 for fp32 (auto)", lambda: [tf32_decision(args.quick, cuda, work / "tf32")]),
        ("compiled step", (lambda: [compiled_step(args.quick, work / "compiled")]) if cuda or not args.quick
         else "--quick"),
    ]
    for name, check in checks:
        if isinstance(check, str):  # why it cannot run here
            rows.append((name, "skipped", check))
            continue
        print(f"… {name}", flush=True)
        t1 = time.perf_counter()
        try:
            rows.extend(check())
            print(f"  {time.perf_counter() - t1:.0f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others
            rows.append((name, "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  {'result':<7}  detail")
    for name, result, detail in rows:
        print(f"{name:<{width}}  {result:<7}  {detail}")
    print(f"\n{time.perf_counter() - t0:.0f} s" + (f"; runs kept in {work}" if args.keep or args.out else ""))
    if not (args.keep or args.out):
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r[1] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
