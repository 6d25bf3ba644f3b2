"""The Ray executor's overhead over ``--workers 2`` on the same 8-run sweep (issue 14, item 6).

The sweep: a linear model on 1,000 MNIST images for one epoch, optim.name × optim.lr (2 × 2) × 2 seeds = 8
runs, with ``train.threads: 1``. Each variant is one fresh ``cnnlab sweep`` command into a fresh folder,
timed wall clock from start to exit (so Ray's start-up counts), alternating the variants ``--repeat``
times so a busy machine slows both alike. The Ray variant starts its own private local instance (no
``--address``) with 1 CPU per run, the same 2-at-a-time as ``--workers 2``. Besides the wall times it
prints where the Ray command's time goes, read from its output and its run folders: start-up until the
first run starts (the sweep's "done in" subtracted from the wall time: imports, planning and, for Ray,
its start-up; the old executor started Ray inside that figure), and the runs' own time (summary ``time.total_s``).

    PYTHONPATH=$PWD CNNLAB_DATA=/work/shared/datasets python benchmarks/bench_ray_overhead.py [--repeat 2]
    # the code of another checkout (e.g. before a change): --code /path/to/that/checkout
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = {"base": {"data": {"name": "mnist", "train_limit": 1000, "val_size": 500}, "model": {"name": "linear"},
                  "optim": {"name": "adam", "lr": 0.01},
                  "train": {"epochs": 1, "batch_size": 100, "progress": False, "threads": 1}},
         "axes": {"optim.name": ["adam", "sgd"], "optim.lr": [0.01, 0.003]}, "seeds": 2}
VARIANTS = {"--workers 2": ["--workers", "2"], "--executor ray": ["--executor", "ray"]}


def cpu_model() -> str:
    """The CPU's name, read here rather than via cnnlab.training.runtime.cpu_model: importing cnnlab imports torch,
    which would load it into the page cache before the timed start-ups and flatter them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(code: Path, folder: Path, flags: list[str]) -> dict:
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(code), CNNLAB_NO_REEXEC="1", CNNLAB_SCRATCH=str(folder / "scratch"))
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "cnnlab.cli", "sweep", str(folder / "bench8.yaml"), "--out", str(out), *flags]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(flags)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["status"] == "completed" for r in rows), rows
    train = sum(json.loads((out / r["run_dir"] / "summary.json").read_text())["time"]["total_s"] for r in rows)
    found = re.search(r"done in ([0-9.]+) s", done.stdout)
    return {"wall": wall, "train_sum": train, "sweep": float(found.group(1)) if found else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--code", type=Path, default=ROOT, help="the cnnlab checkout to time (default: this one)")
    args = p.parse_args()
    load = os.getloadavg()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); python {platform.python_version()}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; code {args.code}")
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-bench-ray-"))
    (folder / "bench8.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for i in range(args.repeat):
        for name, flags in VARIANTS.items():
            r = run_once(args.code, folder, flags)
            results[name].append(r)
            print(f"round {i + 1}: {name:<16} {r['wall']:6.1f} s wall = {r['wall'] - r['sweep']:5.1f} s before the "
                  f"first run (imports, plan{', Ray start-up' if 'ray' in name else ''}) + {r['sweep']:6.1f} s running "
                  f"the runs; the runs' own time {r['train_sum']:6.1f} s (sum over 8)", flush=True)
    med = {name: statistics.median(r["wall"] for r in rs) for name, rs in results.items()}
    print(f"\nmedian wall: --workers 2 {med['--workers 2']:.1f} s, --executor ray {med['--executor ray']:.1f} s, "
          f"ratio {med['--executor ray'] / med['--workers 2']:.2f} (goal ≤ 1.15)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
