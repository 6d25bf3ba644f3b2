"""How much of this machine's arithmetic the zoo's training steps actually use.

First the peak: square matmuls in fp32 and bf16, timed in this process (the best and the
median of several timed bursts). Then, for each network at the batch size its studies use,
the FLOPs of one training step (forward + backward, counted by ``FlopCounterMode``, which
counts matmuls and convolutions) times the steps per second reached, in fp32 (NCHW), in
fp32 + channels_last (what cnnlab's trainer uses for conv nets on a CPU) and in bf16
autocast + channels_last; printed as achieved GFLOP/s and as a fraction of the matching
peak (fp32 rows against the fp32 matmul, bf16 rows against the bf16 matmul). A low fraction
says the step is bound by something other than arithmetic (small convolutions,
memory-bound element-wise ops, Python overhead). On a shared machine other
processes take cores; run it a few times and compare fractions, not absolute figures.

    .venv/bin/python benchmarks/bench_hardware.py [--threads N] [--models lenet5 resnet20] [--seconds 3]
        [--precisions fp32 fp32_cl bf16] [--batch-size N] [--compile]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cnnlab.models  # noqa: E402,F401 - fills the registry
from cnnlab.registry import MODELS  # noqa: E402

# name: (in_channels, image side, the batch size its recipes use, builder options)
ZOO = {
    "lenet5": (1, 28, 100, {}),
    "mnist_cnn": (1, 28, 64, {}),
    "mnist_fast": (1, 28, 256, {}),
    "resnet20": (3, 32, 128, {}),
    "airbench": (3, 32, 512, {}),
}


LABELS = {"fp32": "fp32", "fp32_cl": "fp32 + channels_last", "bf16": "bf16 + channels_last"}


def matmul_rate(dtype: torch.dtype, n: int, seconds: float) -> tuple[float, float]:
    """(best, median) GFLOP/s of n×n @ n×n over bursts of about ``seconds``/5 each."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t0 = time.perf_counter()
    a @ b  # warm-up, and a first guess of the time per call
    per_call = time.perf_counter() - t0
    calls = max(1, int(seconds / 5 / max(per_call, 1e-6)))
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            a @ b
        rates.append(calls * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return max(rates), statistics.median(rates)


def peak(dtype: torch.dtype, seconds: float) -> tuple[int, float, float]:
    # A slow dtype (bf16 emulated without native instructions) gets a smaller matrix so one call
    # does not take minutes; the size used is printed.
    for n in (512, 2048):
        a = torch.randn(n, n).to(dtype)
        t0 = time.perf_counter()
        a @ a
        if n == 2048 or (time.perf_counter() - t0) * (2048 / n) ** 3 > seconds:
            return (n, *matmul_rate(dtype, n, seconds))
    raise AssertionError("unreachable")


def train_rate(name: str, precision: str, seconds: float, batch: int | None = None,
               compile: bool = False) -> tuple[float, float, int]:
    """(training FLOPs per step, steps per second, batch size) for one zoo net. With ``compile``
    the forward runs through ``torch.compile``; its compile time is printed apart."""
    channels, side, usual_batch, options = ZOO[name]
    batch = batch or usual_batch
    torch.manual_seed(0)
    model = MODELS.get(name)(num_classes=10, in_channels=channels, **options)
    with torch.no_grad():
        model.eval()(torch.zeros(2, channels, side, side))  # sizes lazy layers
    model.train()
    channels_last = precision in ("fp32_cl", "bf16")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)
    x = torch.randn(batch, channels, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    forward = model
    if compile:
        forward = torch.compile(model)
        t0 = time.perf_counter()
        with autocast:
            F.cross_entropy(forward(x), y).backward()  # the first call compiles forward and backward
        print(f"  ({name}, {precision}: torch.compile took {time.perf_counter() - t0:.1f} s)", flush=True)

    def step(net=forward):
        with autocast:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step(model)  # counted on the eager model: the same convolutions and matmuls
    flops = counter.get_total_flops()
    step()  # warm-up beyond the counted one
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return flops, n / (time.perf_counter() - t0), batch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp32_cl", "bf16"], choices=list(LABELS),
                    help="fp32_cl = fp32 with channels_last (the trainer's CPU default for conv nets)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    ap.add_argument("--batch-size", type=int, default=None, help="instead of each net's usual batch size")
    ap.add_argument("--compile", action="store_true", help="torch.compile each net (compile time printed apart)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"GLIBC_TUNABLES={'set' if os.environ.get('GLIBC_TUNABLES') else 'unset'}")
    peaks = {}
    print("\n| matmul | size | best GFLOP/s | median GFLOP/s |\n| --- | --- | --- | --- |")
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if not any(p.startswith(label) for p in args.precisions):
            continue
        n, best, med = peak(dtype, args.seconds)
        peaks[label] = best
        print(f"| {label} | {n}² | {best:,.1f} | {med:,.1f} |", flush=True)
    print("\n| net | batch | precision | training GFLOP per step | steps/s | images/s | achieved GFLOP/s | "
          "÷ peak |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        for precision in args.precisions:
            flops, rate, batch = train_rate(name, precision, args.seconds, args.batch_size, args.compile)
            achieved = flops * rate / 1e9
            print(f"| {name} | {batch} | {LABELS[precision]}{' + compile' if args.compile else ''} | "
                  f"{flops / 1e9:.3f} | {rate:.2f} | {rate * batch:,.0f} | {achieved:.1f} | "
                  f"{achieved / peaks[precision[:4]]:.0%} |", flush=True)


if __name__ == "__main__":
    main()
