"""Is channels_last faster than NCHW for the zoo's conv nets on this device, in fp32 (or --precision)?
The measurement behind cnnlab.training.runtime.CHANNELS_LAST_FASTER (what ``train.channels_last: null`` picks).

For each net: training steps (forward, cross-entropy, backward, Adam) on a fixed random batch, NCHW and
channels_last alternately (the order swapping each round, so other jobs on a shared machine hit both),
``--rounds`` rounds of ``--steps`` steps after a warm-up of each; the figure is the median over the rounds
of the process's CPU seconds per step (one thread: less swayed by other processes' load than wall time).
Prints the CPU and, per net, ms per step both ways and the speed-up of channels_last.

    .venv/bin/python benchmarks/bench_channels_last.py                       # fp32, 1 thread, the zoo's conv nets
    .venv/bin/python benchmarks/bench_channels_last.py --models lenet5 resnet20 --rounds 5 --precision bf16
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cnnlab.models import MODELS  # noqa: E402
from cnnlab.training.runtime import autocast_for, cpu_flags  # noqa: E402

# (name, input channels, side, batch): the zoo's conv nets at the sizes their studies use
NETS = [("lenet5", 1, 28, 100), ("mnist_fast", 1, 28, 256), ("mnist_cnn", 1, 28, 128),
        ("alexnet_small", 3, 32, 128), ("resnet20", 3, 32, 128), ("airbench", 3, 32, 512)]


def step_seconds(name: str, c: int, side: int, batch: int, channels_last: bool, steps: int, precision: str,
                 options: dict | None = None) -> float:
    """CPU seconds per training step of the zoo net ``name`` (built with ``options``) after one warm-up step."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MODELS.get(name)(num_classes=10, in_channels=c, **(options or {}))
    model(torch.zeros(2, c, side, side))  # lazy layers take their size
    model.to(memory_format=fmt)
    x = torch.randn(batch, c, side, side).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    device = torch.device("cpu")

    def step():
        with autocast_for(precision, device):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # oneDNN builds its kernels on first use
    t0 = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - t0) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=[n for n, *_ in NETS])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    flags = sorted(cpu_flags() & {"avx512f", "avx512_bf16", "amx_bf16"})
    print(f"CPU: {name}; torch capability {torch.backends.cpu.get_cpu_capability()}; flags {flags or 'none'}; "
          f"{args.threads} thread(s); {args.precision}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'net':<14} {'batch':>5} {'NCHW ms':>9} {'CL ms':>9} {'CL speed-up':>12}")
    for net, c, side, batch in NETS:
        if net not in args.models:
            continue
        times = {False: [], True: []}
        for r in range(args.rounds):
            for cl in ((False, True) if r % 2 == 0 else (True, False)):
                times[cl].append(step_seconds(net, c, side, batch, cl, args.steps, args.precision))
        nchw, cl = statistics.median(times[False]), statistics.median(times[True])
        print(f"{net:<14} {batch:>5} {nchw * 1e3:9.1f} {cl * 1e3:9.1f} {nchw / cl:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
