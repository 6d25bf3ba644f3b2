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

With ``--pieces`` it instead times, in this one process and in CPU time (robust to other
processes' load, unlike wall time), each piece of work cnnlab's step loop does around the
floor's step: the uint8 batch + ``Preprocess`` against the floor's float slice, the
channels_last copy, the metric accumulation, the step bookkeeping, tqdm, the optimizer's
foreach kernels and the loss module; and the whole step both ways.

    .venv/bin/python benchmarks/bench_floor.py                    # 3 rounds, 1 thread
    .venv/bin/python benchmarks/bench_floor.py --threads 1 2 --rounds 3
    .venv/bin/python benchmarks/bench_floor.py --pieces --threads 1 2
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


# ----------------------------------------------------------------------------- per-piece cost


def cpu_us(fn, reps: int, blocks: int = 7) -> tuple[float, float]:
    """CPU microseconds per call of ``fn``: (min, median) over ``blocks`` blocks of ``reps`` calls."""
    for _ in range(5):
        fn()
    per = []
    for _ in range(blocks):
        c0 = time.process_time()
        for _ in range(reps):
            fn()
        per.append((time.process_time() - c0) / reps * 1e6)
    return min(per), statistics.median(per)


def pieces(root: Path, threads: int) -> dict:
    """Each piece cnnlab's step loop adds to (or does differently from) the floor's step, timed alone."""
    import io

    import torch.nn.functional as F
    from tqdm import tqdm

    sys.path.insert(0, str(REPO))
    from cnnlab import data as datamod
    from cnnlab.models import transfer
    from cnnlab.config.schema import Config
    from cnnlab.training.optim import build_loss, build_optimizer

    torch.set_num_threads(threads)
    cfg = Config.model_validate(dict(
        data=dict(name="mnist", root=str(root), download=False),
        model=dict(name="lenet5", activation="tanh", pooling="avg", widths=[6, 16], hidden=[120, 84]),
        optim=dict(name="sgd", lr=0.05, momentum=0.9)))
    splits = datamod.load_splits(cfg.data, "cpu")
    pre = datamod.Preprocess(splits, cfg.data, train=True)
    x_float = pre(splits.train_x, None)  # the floor's tensor: the whole split normalised once
    idx = torch.randperm(len(splits.train_y), generator=torch.Generator().manual_seed(0))[:100]
    y = splits.train_y[idx]
    torch.manual_seed(0)
    net, _ = transfer.build_model(cfg, 10, 1, image_size=28)
    net.to(memory_format=torch.channels_last)
    opt_cnnlab = build_optimizer(transfer.param_groups(net, cfg.optim), cfg.optim)  # foreach=True
    opt_floor = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)  # torch's default: a loop on CPU
    loss_fn = build_loss(cfg.loss, 10)
    xb = x_float[idx].contiguous(memory_format=torch.channels_last)
    out = net(xb)
    loss = loss_fn(out, y)
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    bar = tqdm(total=10**9, file=io.StringIO())  # what train.progress does on a terminal
    state = {"step": 0}

    def bookkeeping():  # train_loop's per-step counters and its divergence check every 50 steps
        state["step"] += 1
        if state["step"] % 50 == 0 or state["step"] % 500 == 0:
            bool(torch.isfinite(loss_sum))

    def metrics():
        loss_sum.add_(loss.detach().float() * len(y))
        correct.add_((out.detach().argmax(1) == y).sum())

    def step(batch, opt):
        o = net(batch().contiguous(memory_format=torch.channels_last))
        lo = loss_fn(o, y)
        opt.zero_grad(set_to_none=True)
        lo.backward()
        opt.step()

    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    rows = {
        "floor's batch: slice of the float tensor": (lambda: x_float[idx], 300),
        "cnnlab's batch: slice of uint8 + Preprocess": (lambda: pre(splits.train_x[idx], None), 300),
        ".contiguous(channels_last) of a 1-channel batch": (lambda: xb.contiguous(memory_format=torch.channels_last), 300),
        "metric accumulation (loss_sum, correct)": (metrics, 300),
        "step counters + divergence check (1 in 50)": (bookkeeping, 300),
        "tqdm bar.update(1)": (lambda: bar.update(1), 300),
        "loss: nn.CrossEntropyLoss module": (lambda: loss_fn(out, y), 300),
        "loss: F.cross_entropy": (lambda: F.cross_entropy(out, y), 300),
        "optimizer.step, foreach (cnnlab)": (opt_cnnlab.step, 300),
        "optimizer.step, per-tensor loop (floor)": (opt_floor.step, 300),
        "whole step, floor (float slice, loop SGD)": (lambda: step(lambda: x_float[idx], opt_floor), 30),
        "whole step, cnnlab (uint8 + Preprocess, foreach SGD)": (
            lambda: step(lambda: pre(splits.train_x[idx], None), opt_cnnlab), 30),
    }
    print(f"{threads} thread(s): CPU microseconds per call (min / median of 7 blocks), in one process")
    result = {}
    for name, (fn, reps) in rows.items():
        lo, med = cpu_us(fn, reps)
        result[name] = med
        print(f"  {name:55s} {lo:9.1f} {med:9.1f}", flush=True)
    return result


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding MNIST/raw")
    ap.add_argument("--floor", type=Path, default=None,
                    help="the floor script (default: ROOT/../bench/plain_loop_lenet.py)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads, set in both (e.g. 1 2)")
    ap.add_argument("--nchw", action="store_true", help="NCHW in both instead of channels_last")
    ap.add_argument("--pieces", action="store_true", help="time cnnlab's per-step extras in-process instead")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    floor = (args.floor or root.parent / "bench" / "plain_loop_lenet.py").resolve()
    cl = not args.nchw
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; python {platform.python_version()}")
    print(f"LeNet-5 tanh/avg, MNIST 50,000 images x 1 epoch, batch 100, SGD 0.05 m0.9, fp32, "
          f"{'channels_last' if cl else 'NCHW'}; floor: {floor}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.pieces:  # in this process: its environment is the caller's
        print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
              f"GLIBC_TUNABLES={'set' if os.environ.get('GLIBC_TUNABLES') else 'unset'}")
        return {threads: pieces(root, threads) for threads in args.threads}
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
            best = {k: max(x[k] for x in rows) for k in ("floor", "cnnlab")}
            results[threads]["best_ratio"] = best["cnnlab"] / best["floor"]
            print(f"{threads} thread(s): median ratio cnnlab / floor {med:.3f} (per round "
                  f"{per_round}); median img/s floor "
                  f"{statistics.median(x['floor'] for x in rows):,.0f}, cnnlab "
                  f"{statistics.median(x['cnnlab'] for x in rows):,.0f}; best round of each (least disturbed "
                  f"by other processes) {best['floor']:,.0f} vs {best['cnnlab']:,.0f} = "
                  f"{best['cnnlab'] / best['floor']:.3f}\n", flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"({time.strftime('%Y-%m-%d %H:%M %Z')})")
    return results


if __name__ == "__main__":
    main()
