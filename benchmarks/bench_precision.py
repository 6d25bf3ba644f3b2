"""fp32 against bf16 on this CPU, per model family: how fast a training step is, and whether a short real
run lands in the same place. The measurement behind cnnlab.training.runtime.CPU_BF16_SLOWER (the families for which
``precision: auto`` keeps fp32 on a CPU with native bf16) and BENCHMARKS.md's "Precision" table.

Speed: for one net of each family, training steps (forward, cross-entropy, backward, Adam) on a fixed random
batch of the net's usual input, in the memory format cnnlab picks on a CPU (channels_last for conv nets),
fp32 and bf16 autocast alternately (the order swapping each round, so other load hits both), ``--rounds``
rounds of ``--steps`` steps after a warm-up; the figure is the median over rounds of the process's CPU
seconds per step with ``--threads`` threads (CPU time: less swayed by other processes than wall time).

Accuracy: ``cnnlab.training.loop.run`` on real MNIST (``--train`` training images, 500 for validation, ``--epochs``
epochs, Adam 0.002, batch 100) for ``--seeds`` seeds in each precision; test accuracy as mean ± sd and the
verdict of the rule below (Welch's t-test through cnnlab.reporting.stats: "within noise" at p ≥ 0.05, else which
precision is ahead). A run that ends diverged or with the doctor's loss_rose counts as failed.

    .venv/bin/python benchmarks/bench_precision.py                          # both parts, every family
    .venv/bin/python benchmarks/bench_precision.py --part speed --rounds 5
    .venv/bin/python benchmarks/bench_precision.py --part accuracy --nets lenet5 airbench --seeds 5

Needs CNNLAB_DATA (the accuracy part). Prints the CPU first; bf16 on a CPU without native bf16 is emulated
(slow), so the speed part's verdict holds only for the kind of CPU it ran on.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_channels_last import step_seconds as channels_last_step  # noqa: E402

from cnnlab.training import loop as train  # noqa: E402
from cnnlab.reporting import doctor
from cnnlab.reporting import stats
from cnnlab.config.load import load_config  # noqa: E402
from cnnlab.models import MODELS  # noqa: E402
from cnnlab.training.runtime import cpu_flags, cpu_model  # noqa: E402

# one net per family (registry family in brackets), with the input its studies use, the speed part's batch
# and the options the accuracy part builds it with (small widths keep a CPU run short)
NETS = {
    "linear": dict(c=1, side=28, batch=100, options={}),                       # [linear]
    "mlp": dict(c=1, side=28, batch=100, options={}),                          # [mlp]
    "lenet5": dict(c=1, side=28, batch=100, options={}),                       # [lenet]
    "mnist_cnn": dict(c=1, side=28, batch=128, options={}),                    # [simple_cnn]
    "alexnet_small": dict(c=3, side=32, batch=128, options={}),                # [alexnet]
    "resnet20": dict(c=3, side=32, batch=128, options={}),                     # [resnet_cifar]
    "airbench": dict(c=3, side=32, batch=512, options={"model.width": 16}),    # [airbench]
    "resnet18": dict(c=3, side=32, batch=128, options={}),                     # [torchvision_zoo]
}


def cpu_line(threads: int) -> str:
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    return (f"CPU: {cpu_model()}; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}; "
            f"flags {flags or 'none'}; {threads} thread(s); load average {os.getloadavg()[0]:.1f}")


def step_seconds(name: str, precision: str, steps: int) -> float:
    """bench_channels_last's timed step, in the memory format cnnlab picks on a CPU (channels_last for conv nets)."""
    spec = NETS[name]
    options = {k.removeprefix("model."): v for k, v in spec["options"].items()}
    conv = any(isinstance(m, torch.nn.Conv2d) for m in MODELS.get(name)(num_classes=10, in_channels=spec["c"],
                                                                            **options).modules())
    return channels_last_step(name, spec["c"], spec["side"], spec["batch"], conv, steps, precision, options)


def speed(nets: list[str], rounds: int, steps: int) -> dict[str, float]:
    """Per net, fp32 seconds per step / bf16 seconds per step (> 1: bf16 faster); prints the table."""
    print("\n## Speed: CPU ms per training step, median of rounds (bf16 speed-up > 1: bf16 faster)")
    print(f"| net | family | batch | fp32 ms | bf16 ms | bf16 speed-up |\n| --- | --- | --- | --- | --- | --- |")
    ratios = {}
    for name in nets:
        times = {"fp32": [], "bf16": []}
        for r in range(rounds):
            for p in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                times[p].append(step_seconds(name, p, steps))
        a, b = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        ratios[name] = a / b
        family = MODELS.info(name).family
        print(f"| {name} | {family} | {NETS[name]['batch']} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f}x |",
              flush=True)
    slower = sorted({MODELS.info(n).family for n, r in ratios.items() if r < 1})
    print(f"\nfamilies where bf16 measured slower than fp32 here: {', '.join(slower) or 'none'}")
    return ratios


def accuracy(nets: list[str], seeds: int, train_images: int, epochs: float) -> None:
    print(f"\n## Accuracy: MNIST, {train_images} training images (500 of them for validation), {epochs} epoch(s), "
          f"Adam 0.002, batch 100; test accuracy over {seeds} seeds")
    print("| net | fp32 | bf16 | p (Welch) | verdict | failed runs (fp32 / bf16) |\n| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for name in nets:
            got, failed = {"fp32": [], "bf16": []}, {"fp32": 0, "bf16": 0}
            for seed in range(seeds):
                for p in ("fp32", "bf16"):
                    cfg = load_config(None, {
                        "data.name": "mnist", "data.train_limit": train_images, "data.val_size": 500,
                        "model.name": name, **NETS[name]["options"], "optim.name": "adam", "optim.lr": 0.002,
                        "loss.name": "nll" if MODELS.info(name).output_kind == "log_probs" else "cross_entropy",
                        "train.epochs": epochs, "train.batch_size": 100, "train.progress": False,
                        "train.precision": p, "seed": seed})
                    out = Path(tmp) / f"{name}-{p}-{seed}"
                    summary = train.run(cfg, out, log=lambda *_: None)
                    bad = summary["status"] != "completed" or any(
                        f["code"] in ("diverged", "loss_rose") for f in doctor.diagnose_run(out))
                    failed[p] += bad
                    got[p].append(summary["test"]["accuracy"])
            pval = stats.welch_p(got["fp32"], got["bf16"])
            a, b = statistics.mean(got["fp32"]), statistics.mean(got["bf16"])
            verdict = "within noise" if pval is None or pval >= 0.05 else ("bf16 ahead" if b > a else "fp32 ahead")
            cell = lambda v: f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f} %" \
                if len(v) > 1 else f"{100 * v[0]:.2f} %"
            print(f"| {name} | {cell(got['fp32'])} | {cell(got['bf16'])} | "
                  f"{'n/a' if pval is None else f'{pval:.2f}'} | {verdict} | {failed['fp32']} / {failed['bf16']} |",
                  flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["speed", "accuracy", "both"], default="both")
    ap.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=3000, help="MNIST training images of each accuracy run")
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(cpu_line(args.threads))
    if args.part in ("speed", "both"):
        speed(args.nets, args.rounds, args.steps)
    if args.part in ("accuracy", "both"):
        accuracy(args.nets, args.seeds, args.train, args.epochs)


if __name__ == "__main__":
    main()
