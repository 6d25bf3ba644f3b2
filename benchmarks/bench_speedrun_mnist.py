"""MNIST ahead of the record: our speed-run recipe against the fast-MNIST record's method
(benchmarks/peers/mnist_record.py), run alternately in one process, seed by seed, so both see the same
machine load. Prints the CPU, each method's test accuracy (mean ± sd over the seeds), training seconds
and the ratio of our training time to the reference's.

Each pair runs in turns (the reference first for even seeds, ours first for odd ones) after one
discarded warm-up run of each (oneDNN builds its kernels on first use). Both use the same thread
count. The reference runs in its best configuration on this CPU: fp32 + channels_last, or bf16
autocast + channels_last where the CPU runs bf16 natively (cnnlab.runtime.resolve_precision).
Training time is the step loop only for both (data loading and the final scoring timed apart).

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
os.environ.setdefault("CNNLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

import torch  # noqa: E402

import mnist_record  # noqa: E402
from cnnlab import runtime, train  # noqa: E402
from cnnlab.loader import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    """The CPU this ran on: model name, torch's kernel level, bf16 flags, cores and load."""
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    flags = sorted(runtime.cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f"})
    return (f"CPU: {name}; torch capability {torch.backends.cpu.get_cpu_capability()}; flags {flags or 'none'}; "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")


def ours(recipe: Path, overrides: list[str], seed: int, threads: int, out: Path) -> dict:
    cfg = load_config(recipe, [*overrides, f"seed={seed}", f"train.threads={threads}"])
    s = train.run(cfg, out / f"{recipe.stem}-seed{seed}", force=True, log=lambda *_: None)
    return {"method": recipe.stem, "seed": seed, "test_accuracy": s["test"]["accuracy"],
            "train_s": s["time"]["train_s"], "eval_s": s["time"]["eval_s"], "steps": s["time"]["steps"],
            "precision": s.get("precision", {}).get("used")}


def reference(data, seed: int, bf16: bool) -> dict:
    return mnist_record.run(Path("."), seed, channels_last=True, bf16=bf16, data=data)


def describe(rows: list[dict]) -> tuple[float, float, float]:
    acc = [r["test_accuracy"] for r in rows]
    return statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0, statistics.mean(
        r["train_s"] for r in rows)


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
    reference(data, 10_000, bf16)  # warm-ups, discarded
    ours(args.recipe, args.overrides, 10_000, args.threads, args.out)
    ref_rows, our_rows = [], []
    for seed in range(args.seeds):
        order = ("ref", "ours") if seed % 2 == 0 else ("ours", "ref")
        for who in order:
            row = reference(data, seed, bf16) if who == "ref" else ours(args.recipe, args.overrides, seed,
                                                                         args.threads, args.out)
            (ref_rows if who == "ref" else our_rows).append(row)
            print(json.dumps(row), flush=True)
    (ra, rsd, rt), (oa, osd, ot) = describe(ref_rows), describe(our_rows)
    pair = statistics.median(o["train_s"] / r["train_s"] for o, r in zip(our_rows, ref_rows))
    lines = [cpu_line(),
             f"reference (mnist_record): {ra:.2%} ± {rsd:.2%} (n={len(ref_rows)}), mean train {rt:.2f} s",
             f"ours ({args.recipe.stem} {' '.join(args.overrides)}): {oa:.2%} ± {osd:.2%} (n={len(our_rows)}), "
             f"mean train {ot:.2f} s",
             f"time ratio ours / reference: {ot / rt:.2f} (of the means), {pair:.2f} (median of the per-seed pairs); "
             f"target >= 99.0 % at <= 0.70: {'met' if oa >= 0.99 and ot / rt <= 0.7 else 'MISSED'}"]
    print("\n".join(lines))
    return {"reference": ref_rows, "ours": our_rows, "summary": lines}


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - t0:.0f} s")
