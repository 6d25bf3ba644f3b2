"""The local executor of a sweep: its runs one after another in this process, or on a pool of spawned
worker processes (``--workers N``), each with its share of the cores, tied to the sweep process so
that none outlives it, and with several GPUs each on its own GPU.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from cnnlab.reporting.results import RESULTS, append_row, row_from_summary
from cnnlab.runs import Status
from cnnlab.sweeps.task import execute_task


def _worker_init(threads: int, parent: int, started=None, gpus: tuple = ()) -> None:
    if gpus:
        assign_gpu(started, gpus)
    import torch

    die_with_parent(parent)
    # Workers share the machine's cores: N workers × (cores // N) threads, never oversubscribed.
    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def assign_gpu(started, gpus: tuple) -> None:
    """Several GPUs: the k-th worker to start sees only GPU k mod n, as its cuda:0 (set before torch
    touches CUDA). ``started`` is a shared counter of the workers started so far."""
    with started.get_lock():
        k, started.value = started.value, started.value + 1
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]


def die_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """End this worker process when the sweep process ``parent`` ends, however it ends (kill -9
    included), so no worker trains on, or idles, after its sweep. Linux: the kernel sends SIGKILL
    (prctl PR_SET_PDEATHSIG); everywhere: a daemon thread that watches the parent pid. A worker
    killed mid-run is like a run killed with -9: the next sweep resumes it from last.pt."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still does it
    if os.getppid() != parent:  # the parent died before the line above took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="cnnlab-parent-watchdog", daemon=True).start()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_inline(tasks: list[dict], on_row: Callable[[dict], None], on_start: Callable[[dict], None]) -> None:
    for task in tasks:
        on_start(task)
        row = execute_task(task)
        on_row(row)
        if row["status"] == Status.INTERRUPTED:  # Ctrl-C inside a run: stop the sweep too
            raise KeyboardInterrupt


def _is_main_test(test) -> bool:
    """Whether an ``if`` test is ``__name__ == "__main__"`` (either way round)."""
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) and any(
        isinstance(x, ast.Constant) and x.value == "__main__" for x in sides)


def unguarded_script() -> str | None:
    """The script whose top-level code, outside ``if __name__ == "__main__":``, is what called us (its path),
    else None. Worker processes are spawned: each imports the main script again (as ``__mp_main__``), so
    such a call would start the sweep again in every worker, and the workers die. Seen from the sweep
    process (the calling line is outside the guard) or from a worker (we run inside that re-import).
    Notebooks and ``python -c`` have no script to import again: None."""
    import ast

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>"
                                     and frame.f_globals.get("__name__") in ("__main__", "__mp_main__")):
        frame = frame.f_back
    if frame is None:
        return None
    path = frame.f_code.co_filename
    if frame.f_globals["__name__"] == "__mp_main__":  # a worker importing the script again
        return path
    if not main_file or os.path.abspath(path) != os.path.abspath(main_file):
        return None
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    line = frame.f_lineno
    guarded = any(isinstance(node, ast.If) and _is_main_test(node.test) and node.lineno <= line <= node.end_lineno
                  for node in tree.body)
    return None if guarded else path


def worker_pool(workers: int, gpus: tuple | None = None) -> ProcessPoolExecutor:
    """The pool of worker processes `cnnlab sweep --workers N` runs its runs on: spawned, cores // N
    threads each, tied to this process, and with two GPUs or more, each worker on its own GPU.
    ``gpus`` (default: the visible GPUs) is for benchmarks/gpu_check.py, which checks the assignment
    with made-up GPU names on a machine with fewer than two."""
    import multiprocessing

    from cnnlab.training.runtime import visible_gpus  # here: planning a sweep does not import torch

    # 'spawn': a fresh interpreter per worker; forking a process that already ran torch threads can hang.
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, cores() // workers)
    gpus = visible_gpus() if gpus is None else tuple(gpus)
    initargs = (threads, os.getpid(), ctx.Value("i", 0), gpus if len(gpus) > 1 else ())
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=initargs)


def run_processes(tasks: list[dict], workers: int, on_row: Callable[[dict], None]) -> None:
    pool = worker_pool(workers)
    try:
        futures = {pool.submit(execute_task, t): t for t in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                on_row(fut.result())
            except BrokenProcessPool as e:
                # A worker died (killed, out of memory): its runs never wrote a row; record them.
                row = row_from_summary(task, {"status": Status.FAILED}, error=f"worker process died: {e}")
                append_row(Path(task["out_dir"]) / RESULTS, row)
                on_row(row)
    except KeyboardInterrupt:
        # The workers got the same SIGINT: their runs stop at the next step as 'interrupted'.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
