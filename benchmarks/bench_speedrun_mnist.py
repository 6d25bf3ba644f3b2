"""MNIST ahead of the record: our speed-run recipe against the fast-MNIST record's method
(benchmarks/peers/mnist_record.py), run alternately in one process, seed by seed, so both see the same
machine load. Prints the CPU, each method's test accuracy (mean ± sd over the seeds), training seconds
and the ratio of our training time to the reference's.

Both run in this one process with the allocator and OpenMP settings the `cnnlab` command uses.
Each pair runs in turns (the reference first for even seeds, ours first for odd ones) after one
discarded warm-up run of each (oneDNN builds its kernels on first use). Both use the same thread
count. The reference runs in its best configuration on this CPU: fp32 + channels_last, or bf16
autocast + channels_last where the CPU runs bf16 natively (cnnlab.training.runtime.resolve_precision).
Training time is the step loop only for both (data loading and the final scoring timed apart), as wall
seconds and as the process's CPU seconds (with one thread, CPU time is less swayed by other jobs).

    .venv/bin/python benchmarks/bench_speedrun_mnist.py                   # recipes/speedrun/mnist_99_0_fast.yaml, 5 seeds
    .venv/bin/python benchmarks/bench_speedrun_mnist.py RECIPE --seeds 5 --threads 1 [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Both methods get what the `cnnlab` command gives itself (cnnlab/cli.py): glibc's allocator kept from
# returning memory to the OS (~20 % of step time, ANCHORS.md) and OpenMP threads that sleep rather than
# spin on a shared machine. Both must be set before the process starts: re-run once with them.
TUNED = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296",
         "OMP_WAIT_POLICY": "PASSIVE"}
if __name__ == "__main__" and sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ:
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
os.environ.setdefault("CNNLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

import torch  # noqa: E402

import mnist_record  # noqa: E402
from cnnlab.training import loop as train  # noqa: E402
from cnnlab.training import runtime
from cnnlab.config.load import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    """The CPU this ran on: model name, torch's kernel level, bf16 flags, cores and load."""
    name = runtime.cpu_model()
    flags = sorted(runtime.cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f"})
    return (f"CPU: {name}; torch capability {torch.backends.cpu.get_cpu_capability()}; flags {flags or 'none'}; "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")


class LoopClock:
    """The CPU seconds of cnnlab's step loop, read from its log: the loop starts after the run's last
    start line and its first evaluation line ("step ...") comes right after the loop's epoch (with
    data.val_size=0 the validation pass in between scores nothing)."""

    def __init__(self):
        self.start = self.end = None

    def __call__(self, line: str) -> None:
        now = time.process_time()
        if line.startswith("step ") and self.end is None:
            self.end = now
        elif self.end is None:
            self.start = now

    @property
    def seconds(self) -> float | None:
        return round(self.end - self.start, 3) if self.start is not None and self.end is not None else None


def ours(recipe: Path, overrides: list[str], seed: int, threads: int, out: Path) -> dict:
    cfg = load_config(recipe, [*overrides, f"seed={seed}", f"train.threads={threads}"])
    clock = LoopClock()
    s = train.run(cfg, out / f"{recipe.stem}-seed{seed}", force=True, log=clock)
    return {"method": recipe.stem, "seed": seed, "test_accuracy": s["test"]["accuracy"],
            "train_s": s["time"]["train_s"], "train_cpu_s": clock.seconds if cfg.train.epochs <= 1 else None,
            "eval_s": s["time"]["eval_s"], "steps": s["time"]["steps"], "precision": s.get("precision", {}).get("used")}


def reference(data, seed: int, bf16: bool) -> dict:
    return mnist_record.run(Path("."), seed, channels_last=True, bf16=bf16, data=data)


def describe(rows: list[dict]) -> tuple[float, float, float, float | None]:
    """Accuracy mean and sd, mean training wall seconds and mean training CPU seconds."""
    acc, cpu = [r["test_accuracy"] for r in rows], [r["train_cpu_s"] for r in rows]
    return (statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0,
            statistics.mean(r["train_s"] for r in rows), None if None in cpu else statistics.mean(cpu))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", type=Path, nargs="?", default=ROOT / "recipes/speedrun/mnist_99_0_fast.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of our recipe")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both methods")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_speedrun_mnist"))
    args = ap.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    precision, reason = runtime.resolve_precision("auto", runtime.device_facts(torch.device("cpu")))
    bf16 = precision == "bf16"
    print(cpu_line())
    print(f"reference: fp32 weights, channels_last, {'bf16 autocast' if bf16 else 'fp32'} ({reason}); "
          f"threads {args.threads} for both", flush=True)
    root = Path(os.environ["CNNLAB_DATA"])
    data = (*mnist_record.load_mnist(root, True), *mnist_record.load_mnist(root, False))
    reference(data, 10_000, bf16)  # warm-ups, discarded (ours on a slice: its final scoring is long)
    ours(args.recipe, [*args.overrides, "data.train_limit=5120"], 10_000, args.threads, args.out)
    ref_rows, our_rows = [], []
    for seed in range(args.seeds):
        order = ("ref", "ours") if seed % 2 == 0 else ("ours", "ref")
        for who in order:
            row = reference(data, seed, bf16) if who == "ref" else ours(args.recipe, args.overrides, seed,
                                                                         args.threads, args.out)
            (ref_rows if who == "ref" else our_rows).append(row)
            print(json.dumps(row), flush=True)
    (ra, rsd, rt, rc), (oa, osd, ot, oc) = describe(ref_rows), describe(our_rows)
    pair = statistics.median(o["train_s"] / r["train_s"] for o, r in zip(our_rows, ref_rows))
    cpu = f", CPU {oc / rc:.2f}" if oc and rc else ""
    lines = [cpu_line(),
             f"reference (mnist_record): {ra:.2%} ± {rsd:.2%} (n={len(ref_rows)}), mean train {rt:.2f} s"
             + (f" (CPU {rc:.2f} s)" if rc else ""),
             f"ours ({args.recipe.stem} {' '.join(args.overrides)}): {oa:.2%} ± {osd:.2%} (n={len(our_rows)}), "
             f"mean train {ot:.2f} s" + (f" (CPU {oc:.2f} s)" if oc else ""),
             f"time ratio ours / reference: {ot / rt:.2f} wall (of the means), {pair:.2f} (median of the per-seed "
             f"pairs){cpu}; target >= 99.0 % at <= 0.70: {'met' if oa >= 0.99 and ot / rt <= 0.7 else 'MISSED'} "
             f"on wall time" + (f", {'met' if oa >= 0.99 and oc / rc <= 0.7 else 'MISSED'} on CPU time" if cpu else "")]
    print("\n".join(lines))
    return {"reference": ref_rows, "ours": our_rows, "summary": lines}


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - t0:.0f} s")
