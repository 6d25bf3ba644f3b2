"""CIFAR-10 against airbench94: our speed-run recipe and airbench94's method (benchmarks/peers/airbench94.py),
run alternately in one process, seed by seed, on the same images (the cifar10-jpg copy, as cnnlab loads it,
handed to both). Prints the CPU, one JSON row per run, each method's test accuracy with its test-time
augmentation (mean ± sd over the seeds), mean training seconds and the ratio of ours to the reference's.

Each pair runs in turns (the reference first for even seeds, ours first for odd ones) after one discarded
warm-up of each on a small setting (oneDNN builds its kernels on first use). Both use the same threads and
the precision cnnlab.training.runtime.resolve_precision picks for this CPU: bf16 autocast with fp32 weights where the
CPU runs bf16 natively (AVX-512 BF16 / AMX), else fp32; both in channels_last. Training seconds: ours is
the step loop (summary.json time.train_s; the whitening init and the final scoring apart), the reference's
its whitening init plus its epochs (its final scoring apart).

    .venv/bin/python benchmarks/bench_speedrun_cifar.py --seeds 3                     # the full comparison
    .venv/bin/python benchmarks/bench_speedrun_cifar.py --smoke                       # checks it runs (minutes)
    .venv/bin/python benchmarks/bench_speedrun_cifar.py RECIPE --seeds 3 --threads 2 [key=value ...]
    .venv/bin/python benchmarks/bench_speedrun_cifar.py --steps 6 --repeat 3 --threads 1  # the training step alone

``--smoke``: one seed, 1 epoch on 2,000 training images, both networks at width 16 (a quarter), ours at
batch 256 (8 steps: a one-cycle schedule needs 5), the reference scored on 500 test images; the figures mean
nothing, the run shows both paths work end to end.

``--steps N``: the training step alone, full width (width 16 with ``--smoke``), batch ``--batch`` (512, the
recipe's) for both, or the reference at ``--ref-batch`` (its own 1,024; ratios then per image): in each of
``--repeat`` turns of each method, alternating, ``--warmup`` untimed steps then N timed ones on the first
images of the training set (the same for both). Ours is cnnlab's own loop (set_up, train_loop: gather,
augmentation, step, EMA, schedule) bounded by two evaluation points (nothing to score with data.val_size=0);
the reference's, airbench94.step_seconds (its windows and order drawn for the timed epoch, its slow copy
every 5 steps). Prints each turn's wall and CPU ms per step (process CPU time: steadier than wall time
on a shared machine), each method's median and the per-pair ratios with their median. ``--pieces``: the CPU
ms of each method's work per step besides the network's forward and backward (batch, augmentation, optimizer,
EMA / slow copy, the reference's per-epoch windows), each timed alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

TUNED = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296",
         "OMP_WAIT_POLICY": "PASSIVE"}
if __name__ == "__main__" and sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ:
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
os.environ.setdefault("CNNLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

import torch  # noqa: E402

import airbench94  # noqa: E402
from bench_speedrun_mnist import cpu_line  # noqa: E402
from cnnlab import data as datamod  # noqa: E402
from cnnlab.training import loop as train  # noqa: E402
from cnnlab.training import runtime
from cnnlab.data.batches import train_batches  # noqa: E402
from cnnlab.config.load import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE_OURS = ["data.train_limit=2000", "train.epochs=1", "model.width=16", "train.batch_size=256"]
SMOKE_REF = {"limit": None, "epochs": 1, "test_limit": 500, "width": 16}  # limit: the data is cut already


def ours(recipe: Path, overrides: list[str], seed: int, threads: int, out: Path) -> dict:
    cfg = load_config(recipe, [*overrides, f"seed={seed}", f"train.threads={threads}"])
    s = train.run(cfg, out / f"{recipe.stem}-seed{seed}", force=True, log=lambda line: None)
    return {"method": recipe.stem, "seed": seed, "test_accuracy": s["test"]["accuracy"],
            "train_s": s["time"]["train_s"], "eval_s": s["time"]["eval_s"], "steps": s["time"]["steps"],
            "precision": s.get("precision", {}).get("used")}


class Clock:
    """Marks each evaluation point of cnnlab's loop: the training seconds so far (``row["elapsed_s"]``, as a
    tracker of cnnlab.training.tracking's protocol) and the process's CPU seconds at its log line (after the steps,
    before the checkpoints are written) and when the trackers hear of it (after them)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu_logged: list[float] = []
        self.cpu_after: list[float] = []

    def log(self, line: str) -> None:
        if line.startswith("step "):
            self.cpu_logged.append(time.process_time())

    def on_eval(self, row: dict) -> None:
        self.wall.append(row["elapsed_s"])
        self.cpu_after.append(time.process_time())

    def on_finish(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


def our_step_seconds(recipe: Path, overrides: list[str], steps: int, warmup: int, threads: int, out: Path,
                     batch: int = 512) -> tuple[float, float]:
    """(wall, CPU) seconds per step of cnnlab's own loop (batch, augmentation, step, EMA, schedule) on the first
    (warmup + steps) · batch training images: an evaluation point after ``warmup`` steps (nothing to score with
    data.val_size=0) and one at the epoch's end bound the timed steps; no final scoring."""
    cfg = load_config(recipe, [*overrides, f"data.train_limit={(warmup + steps) * batch}", "train.epochs=1",
                               f"train.batch_size={batch}", f"train.eval_every={warmup}", f"train.threads={threads}"])
    clock = Clock()
    with runtime.run_flags(cfg.train), runtime.tf32_flags(cfg.train):
        s = train.set_up(cfg, out / "steps", False, clock.log)
        train.open_run_folder(s, None, False, (clock,))
        train.train_loop(s, {})
    return (clock.wall[-1] - clock.wall[0]) / steps, (clock.cpu_logged[-1] - clock.cpu_after[0]) / steps


def step_timing(args, overrides: list[str], data, bf16: bool) -> dict:
    """--steps: both methods' step time, in turns (the reference first in even repeats); ratios per image."""
    train_x, train_y = data[0], data[1]
    ref_batch = args.ref_batch or args.batch
    width = {"width": 16} if args.smoke else {}
    rows = {"ref": [], "ours": []}  # (wall ms, CPU ms) per step
    for r in range(args.repeat):
        for who in (("ref", "ours") if r % 2 == 0 else ("ours", "ref")):
            if who == "ref":
                wall, cpu = airbench94.step_seconds(train_x, train_y, args.steps, args.warmup, ref_batch, bf16, **width)
            else:
                wall, cpu = our_step_seconds(args.recipe, overrides, args.steps, args.warmup, args.threads, args.out,
                                             args.batch)
            rows[who].append((1000 * wall, 1000 * cpu))
            print(json.dumps({"repeat": r, "method": "airbench94" if who == "ref" else args.recipe.stem,
                              "batch": ref_batch if who == "ref" else args.batch, "ms_per_step": round(1000 * wall, 1),
                              "cpu_ms_per_step": round(1000 * cpu, 1), "load": round(os.getloadavg()[0], 1)}),
                  flush=True)
    per_image = args.batch / ref_batch  # ours' per-image time over the reference's = step ratio / per_image
    lines = [cpu_line(), f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeat} turns each; "
             f"batch: reference {ref_batch}, ours {args.batch}; threads {args.threads}"]
    for k, clock in ((0, "wall"), (1, "CPU")):
        ref_ms, our_ms = [v[k] for v in rows["ref"]], [v[k] for v in rows["ours"]]
        ratios = [o / f / per_image for o, f in zip(our_ms, ref_ms)]
        lines += [f"{clock} ms per step: reference (airbench94) median {statistics.median(ref_ms):.0f} "
                  f"({' / '.join(f'{v:.0f}' for v in ref_ms)}); ours ({args.recipe.stem} {' '.join(overrides)}) "
                  f"median {statistics.median(our_ms):.0f} ({' / '.join(f'{v:.0f}' for v in our_ms)})",
                  f"{clock} ratio ours / reference{' per image' if per_image != 1 else ''}, per pair: "
                  f"{' / '.join(f'{v:.3f}' for v in ratios)}; median {statistics.median(ratios):.3f}"
                  + (" (smoke: the figures mean nothing)" if args.smoke else "")]
    print("\n".join(lines))
    return {"reference_ms": rows["ref"], "ours_ms": rows["ours"], "summary": lines}


def cpu_ms(fn, repeat: int = 30) -> float:
    """Median CPU ms of ``fn()`` over ``repeat`` calls after two untimed ones (this thread's CPU time)."""
    fn(), fn()
    times = []
    for _ in range(repeat):
        c0 = time.thread_time()
        fn()
        times.append(1000 * (time.thread_time() - c0))
    return statistics.median(times)


def step_pieces(args, overrides: list[str], data) -> dict:
    """--pieces: CPU ms of each method's work per step besides the network's forward and backward, at batch
    --batch, full width (gradients stand in as random tensors): what the two steps do differently."""
    bs, n = args.batch, 100 * args.batch
    cfg = load_config(args.recipe, [*overrides, f"data.train_limit={n}", "train.epochs=1", f"train.batch_size={bs}",
                                    f"train.threads={args.threads}"])
    s = train.set_up(cfg, args.out / "pieces", False, lambda line: None)
    for p in s.model.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    def batch():
        x, y = next(iter(train_batches(s.inputs.train_x, s.inputs.train_y, bs, cfg.seed, 0)))
        x = s.train_pre(x, s.aug_gen, 0)
        return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x

    out, y = torch.randn(bs, 10), torch.randint(0, 10, (bs,))
    sums = torch.zeros(()), torch.zeros((), dtype=torch.long)
    rows = {"ours: batch (gather, crop + flip, normalise, channels_last)": cpu_ms(batch),
            "ours: EMA update": cpu_ms(lambda: s.ema.update_parameters(s.model)) if s.ema is not None else 0.0,
            "ours: optimizer step": cpu_ms(s.optimizer.step),
            "ours: running loss and hits": cpu_ms(lambda: s.train_step._accumulate(
                torch.tensor(1.0), s.train_step._hits(out, y), bs, *sums))}
    g = torch.Generator().manual_seed(0)
    net, opt, sched, _ = airbench94.build(16 if args.smoke else airbench94.HYP["width"], bs, 10 ** 6)
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 1e-3
    padded = airbench94.prepare(net, data[0], g)
    c0 = time.thread_time()
    src, order = airbench94.epoch_source(padded, 1, g)
    per_epoch = 1000 * (time.thread_time() - c0) / (len(padded) // bs)
    at = iter(range(10 ** 9))

    def ref_batch():
        i = next(at) % (len(padded) // bs)
        idx = order[i * bs:(i + 1) * bs]
        return src[idx], data[1][idx]

    slow = airbench94.SlowCopy(net)
    rows.update({f"reference: an epoch's windows and order ({len(padded):,} images), per step": per_epoch,
                 "reference: batch (index)": cpu_ms(ref_batch),
                 "reference: optimizer step": cpu_ms(opt.step),
                 "reference: slow copy pull, per step (every 5)": cpu_ms(lambda: slow.pull(0.5)) / 5})
    print(cpu_line())
    for name, ms in rows.items():
        print(f"{ms:8.2f} ms  {name}")
    for who in ("ours", "reference"):
        print(f"{sum(v for k, v in rows.items() if k.startswith(who)):8.2f} ms  {who}: total")
    return rows


def reference_data(recipe: Path, overrides: list[str]):
    """The images our recipe trains and is scored on (all 50,000 training images, or the smoke's subset)."""
    cfg = load_config(recipe, overrides)
    splits = datamod.load_splits(cfg.data.model_copy(update={"val_size": 0}), "cpu")
    return splits.train_x, splits.train_y, splits.test_x, splits.test_y


def describe(rows: list[dict]) -> tuple[float, float, float]:
    acc = [r["test_accuracy"] for r in rows]
    return statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0, \
        statistics.mean(r["train_s"] for r in rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", type=Path, nargs="?", default=ROOT / "recipes/speedrun/cifar10_94_30min.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of our recipe")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both methods")
    ap.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch on 2,000 images, width 16")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_speedrun_cifar"))
    ap.add_argument("--steps", type=int, default=0,
                    help="step timing instead of the full runs: this many timed steps per turn of each method")
    ap.add_argument("--batch", type=int, default=512, help="--steps: the batch of both (ours: an override)")
    ap.add_argument("--ref-batch", type=int, default=0, help="--steps: the reference's batch when not --batch "
                    "(airbench94's own is 1,024); the ratios are then per image")
    ap.add_argument("--warmup", type=int, default=1, help="--steps: untimed steps before each turn's timed ones")
    ap.add_argument("--repeat", type=int, default=3, help="--steps: turns of each method, alternating")
    ap.add_argument("--pieces", action="store_true", help="CPU ms of each step's work besides forward / backward")
    args = ap.parse_intermixed_args(argv)
    if args.steps and args.warmup < 1:
        ap.error("--steps needs --warmup >= 1 (the evaluation point after the warm-up starts ours' timing)")
    torch.set_num_threads(args.threads)
    if args.steps or args.pieces:  # full width unless --smoke; the batch is --batch
        smoke = [o for o in SMOKE_OURS if o.startswith("model.")] if args.smoke else []
        overrides = [*args.overrides, *smoke]
    else:
        overrides = [*args.overrides, *(SMOKE_OURS if args.smoke else [])]
    ref_opts = SMOKE_REF if args.smoke else {}
    seeds = 1 if args.smoke else args.seeds
    precision, reason = runtime.resolve_precision("auto", runtime.device_facts(torch.device("cpu")))
    bf16 = precision == "bf16"
    print(cpu_line())
    print(f"reference: fp32 weights, channels_last, {'bf16 autocast' if bf16 else 'fp32'} ({reason}); ours: "
          f"{args.recipe.name} {' '.join(overrides)}; threads {args.threads} for both", flush=True)
    data = reference_data(args.recipe, overrides)
    if args.pieces:
        return step_pieces(args, overrides, data)
    if args.steps:
        return step_timing(args, overrides, data, bf16)
    t0 = time.perf_counter()
    warm = {"limit": 2000, "epochs": 1, "test_limit": 500, **({"width": 16} if args.smoke else {})}
    airbench94.run(10_000, bf16, data=data, **warm)  # warm-ups, discarded
    ours(args.recipe, [*overrides, *SMOKE_OURS[:2], SMOKE_OURS[3]], 10_000, args.threads, args.out)
    print(f"warm-ups: {time.perf_counter() - t0:.0f} s", flush=True)
    ref_rows, our_rows = [], []
    for seed in range(seeds):
        for who in (("ref", "ours") if seed % 2 == 0 else ("ours", "ref")):
            if who == "ref":
                row = airbench94.run(seed, bf16, data=data, **ref_opts)
                ref_rows.append(row)
            else:
                row = ours(args.recipe, overrides, seed, args.threads, args.out)
                our_rows.append(row)
            print(json.dumps(row), flush=True)
    (ra, rsd, rt), (oa, osd, ot) = describe(ref_rows), describe(our_rows)
    pair = statistics.median(o["train_s"] / r["train_s"] for o, r in zip(our_rows, ref_rows))
    met = oa >= ra and ot / rt <= 1.0
    lines = [cpu_line(),
             f"reference (airbench94, its TTA): {ra:.2%} ± {rsd:.2%} (n={len(ref_rows)}), mean train {rt:.1f} s",
             f"ours ({args.recipe.stem} {' '.join(overrides)}): {oa:.2%} ± {osd:.2%} (n={len(our_rows)}), "
             f"mean train {ot:.1f} s",
             f"time ratio ours / reference: {ot / rt:.2f} (of the means), {pair:.2f} (median of the per-seed pairs); "
             f"target >= the reference's accuracy at <= 1.0x its time: {'met' if met else 'MISSED'}"
             + (" (smoke: the figures mean nothing)" if args.smoke else "")]
    print("\n".join(lines))
    return {"reference": ref_rows, "ours": our_rows, "summary": lines}


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - t0:.0f} s")
