"""Start-up time of the light ``cnnlab`` commands beside ``python -c "import torch"``.

Each command runs as a fresh process ``--repeat`` times (default 5), alternating with the
torch baseline in the same sitting, so a busy machine slows both alike; the table gives the
median seconds and the ratio to the baseline's median (the goal: every ratio <= 2). The CLI's
self re-exec is turned off (CNNLAB_NO_REEXEC=1) so each figure is one interpreter start.

    PYTHONPATH=$PWD python benchmarks/bench_startup.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "recipes" / "sweeps" / "study_b_mnist_grid.yaml"
COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "cnnlab summary lenet5": [sys.executable, "-m", "cnnlab.cli", "summary", "lenet5"],
    f"cnnlab sweep {SWEEP.relative_to(ROOT)} --dry-run": [sys.executable, "-m", "cnnlab.cli", "sweep", str(SWEEP),
                                                          "--dry-run", "--out", "/tmp/cnnlab-bench-startup"],
    "cnnlab data list": [sys.executable, "-m", "cnnlab.cli", "data", "list"],
}


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


def time_once(argv: list[str]) -> float:
    env = dict(os.environ, CNNLAB_NO_REEXEC="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); python {platform.python_version()}")
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, argv in COMMANDS.items():
        time_once(argv)  # warm the file cache once, not timed
    for _ in range(args.repeat):  # alternate: every round runs each command once
        for name, argv in COMMANDS.items():
            times[name].append(time_once(argv))
    base = statistics.median(times['python -c "import torch"'])
    print(f"{'command':<62} {'median s':>9} {'x torch':>8}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<62} {m:9.2f} {m / base:8.2f}")


if __name__ == "__main__":
    main()
