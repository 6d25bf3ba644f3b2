"""`cnnlab train` against the floor of any data path, alternated in one sitting.

The floor (``../shared/bench/plain_loop_lenet.py``) is a plain loop over MNIST held as one
pre-normalised float tensor, batches sliced by a random permutation: no DataLoader, no
augmentation, no evaluation. Both sides train the same network (LeNet-5 with tanh and
average pooling, two convs then FC 400→120→84→10: cnnlab's ``lenet5`` with ``widths=[6, 16]``,
``hidden=[120, 84]``), batch 100, SGD lr 0.05 momentum 0.9, one epoch of 50,000 images, fp32,
in the same memory layout (channels_last by default, cnnlab's CPU default for conv nets).

Fairness: each side is a fresh process with the same environment (the thread count as
``OMP_NUM_THREADS`` and, for cnnlab, ``train.threads``; ``OMP_WAIT_POLICY=PASSIVE`` and the
glibc malloc tunable that the ``cnnlab`` command sets for itself). cnnlab's figure is its own
``summary.json`` ``time.train_images_per_s``: 500 steps × 100 images over the step loop's time,
which leaves out data loading, model set-up, the one validation pass at the end of the epoch
(``train.eval_every=0``: the loop stops its clock before evaluating) and the final scoring.
The floor times its loop the same way (permutation, slicing, steps). The two run alternately,
the order swapping each round, so load from other processes on a shared machine hits both.

    .venv/bin/python benchmarks/bench_floor.py                    # 3 rounds, 1 thread
    .venv/bin/python benchmarks/bench_floor.py --threads 1 2 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path(os.environ.get("CNNLAB_DATA", REPO.parent / "shared" / "datasets"))
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"

# The floor script's network, batch and optimizer, as a cnnlab study.
STUDY = """\
name: floor_lenet5
data: {{name: mnist, root: {root}, download: false}}   # 50,000 train / 10,000 val / 10,000 test
model: {{name: lenet5, activation: tanh, pooling: avg, widths: [6, 16], hidden: [120, 84]}}
optim: {{name: sgd, lr: 0.05, momentum: 0.9}}
train: {{epochs: 1, batch_size: 100, eval_every: 0, threads: {threads}, channels_last: {cl}, progress: false}}
seed: 0
"""


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(threads: int) -> dict:
    """The same process environment for both sides (cnnlab's CLI would set the last three itself)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                PYTHONPATH=str(REPO), CNNLAB_NO_REEXEC="1", OMP_WAIT_POLICY="PASSIVE",
                GLIBC_TUNABLES=GLIBC_TUNABLES)


# ----------------------------------------------------------------------------- the two sides


def run_floor(floor: Path, root: Path, threads: int, channels_last: bool) -> float:
    out = subprocess.run([sys.executable, str(floor), str(root), "1", "100", "1" if channels_last else "0"],
                         env=environment(threads), capture_output=True, text=True, check=True).stdout
    match = re.search(r"plain loop: ([\d,.]+) img/s", out)
    if match is None:
        raise RuntimeError(f"the floor script printed no img/s figure:\n{out}")
    return float(match.group(1).replace(",", ""))


def run_cnnlab(work: Path, root: Path, threads: int, channels_last: bool) -> dict:
    study = work / f"floor_lenet5_{threads}t.yaml"
    study.write_text(STUDY.format(root=root, threads=threads, cl=str(channels_last).lower()))
    out = work / f"run_{threads}t"
    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", str(study), "--out", str(out), "--force"],
                          env=environment(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cnnlab train failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    t = s["time"]
    assert t["steps"] == 500, f"expected 500 steps of 100 images, got {t['steps']}"
    return {"images_per_s": t["train_images_per_s"], "train_s": t["train_s"], "eval_s": t["eval_s"],
            "test_accuracy": s["test"]["accuracy"]}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding MNIST/raw")
    ap.add_argument("--floor", type=Path, default=None,
                    help="the floor script (default: ROOT/../bench/plain_loop_lenet.py)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads, set in both (e.g. 1 2)")
    ap.add_argument("--nchw", action="store_true", help="NCHW in both instead of channels_last")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    floor = (args.floor or root.parent / "bench" / "plain_loop_lenet.py").resolve()
    cl = not args.nchw
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; python {platform.python_version()}")
    print(f"LeNet-5 tanh/avg, MNIST 50,000 images x 1 epoch, batch 100, SGD 0.05 m0.9, fp32, "
          f"{'channels_last' if cl else 'NCHW'}; floor: {floor}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_floor_") as tmp:
        for threads in args.threads:
            rows = []
            for r in range(args.rounds):
                order = ("floor", "cnnlab") if r % 2 == 0 else ("cnnlab", "floor")
                got = {}
                for side in order:
                    got[side] = (run_floor(floor, root, threads, cl) if side == "floor"
                                 else run_cnnlab(Path(tmp), root, threads, cl))
                ours, theirs = got["cnnlab"]["images_per_s"], got["floor"]
                rows.append({"cnnlab": ours, "floor": theirs, "ratio": ours / theirs,
                             "test_accuracy": got["cnnlab"]["test_accuracy"]})
                print(f"{threads} thread(s), round {r + 1} ({order[0]} first): floor {theirs:,.0f} img/s, "
                      f"cnnlab {ours:,.0f} img/s (train {got['cnnlab']['train_s']:.2f} s; final eval "
                      f"{got['cnnlab']['eval_s']:.1f} s apart; test {got['cnnlab']['test_accuracy']:.2%}), "
                      f"ratio {ours / theirs:.3f}; load {os.getloadavg()[0]:.2f}", flush=True)
            med = statistics.median(x["ratio"] for x in rows)
            results[threads] = {"rounds": rows, "median_ratio": med}
            per_round = ", ".join(f"{x['ratio']:.3f}" for x in rows)
            print(f"{threads} thread(s): median ratio cnnlab / floor {med:.3f} (per round "
                  f"{per_round}); median img/s floor "
                  f"{statistics.median(x['floor'] for x in rows):,.0f}, cnnlab "
                  f"{statistics.median(x['cnnlab'] for x in rows):,.0f}\n", flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"({time.strftime('%Y-%m-%d %H:%M %Z')})")
    return results


if __name__ == "__main__":
    main()
