"""airbench94's ingredients, each alone, on a small proxy of the CIFAR-10 speed run: the 32/128/128
airbench of recipes/speedrun/cifar10_91_10min.yaml on the first ``--limit`` training images for a few
epochs, every ingredient on against all off, seed by seed in one process (each seed runs every
condition in turn, so the machine's load falls on all of them alike). Prints the CPU, then one JSON row
per run, then per condition: test accuracy mean ± sd, mean training seconds (the step loop) and the
difference to the baseline.

    .venv/bin/python benchmarks/bench_airbench_ingredients.py --seeds 3 --limit 10000 --epochs 3 --threads 1
    .venv/bin/python benchmarks/bench_airbench_ingredients.py --only lookahead,baseline ...  # some conditions
    .venv/bin/python benchmarks/bench_airbench_ingredients.py --pre-pad-timing --threads 1  # pre_pad's speed alone

The proxy scores the test split without test-time augmentation (``train.tta=none``: a third of the
scoring time) and never the train split; the whitening bias learns for the first third of the epochs, as
airbench94's 3 of its ~10.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

TUNED = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296",
         "OMP_WAIT_POLICY": "PASSIVE"}
if __name__ == "__main__" and sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ:
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CNNLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

from bench_speedrun_mnist import cpu_line  # noqa: E402
from cnnlab.training import loop as train  # noqa: E402
from cnnlab.config.load import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/speedrun/cifar10_91_10min.yaml"


def conditions(epochs: float) -> dict[str, list[str]]:
    """Each ingredient alone on top of the baseline (the recipe as committed), and all of them together."""
    each = {
        "lookahead": ["train.lookahead=0.7738", "train.lookahead_every=5"],
        "whitening_bias": [f"train.whitening_bias_epochs={epochs / 3:g}"],
        "alternate_flip": ["data.augment.flip_mode=alternate"],
        "norm_bias_lr_64": ["optim.norm_bias_lr_scale=64"],
    }
    # pre_pad draws the same crops as per-batch padding (tests/test_augment.py): its accuracy is the
    # baseline's by construction, so it runs only inside "all" (its speed: --pre-pad-timing)
    return {"baseline": [], **each, "all": [o for opts in each.values() for o in opts] + ["data.augment.pre_pad=true"]}


def run_one(name: str, options: list[str], seed: int, args) -> dict:
    common = [f"data.train_limit={args.limit}", f"train.epochs={args.epochs}", f"train.threads={args.threads}",
              "train.tta=none", "train.score_train=false", f"seed={seed}"]
    cfg = load_config(RECIPE, [*common, *options, *args.overrides])
    cpu0 = time.process_time()
    s = train.run(cfg, args.out / f"{name}-seed{seed}", force=True, log=lambda line: None)
    return {"condition": name, "seed": seed, "test_accuracy": s["test"]["accuracy"], "train_s": s["time"]["train_s"],
            "eval_s": s["time"]["eval_s"], "run_cpu_s": round(time.process_time() - cpu0, 1),
            "precision": s.get("precision", {}).get("used")}


def pre_pad_timing(threads: int, rounds: int = 5, steps: int = 40) -> None:
    """data.augment.pre_pad's saving: the per-batch augmentation of 512 CIFAR-sized uint8 images (reflect crop
    by 2 + flip, normalised), cut from the stored images (padding each batch) or from the padded copy; process
    CPU seconds per batch, the best of ``rounds`` rounds of ``steps`` batches, the two alternating."""
    import torch

    from cnnlab.data.augment import Preprocess
    from cnnlab.config.schema import DataConfig

    torch.set_num_threads(threads)
    x = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8)
    splits = SimpleNamespace(train_x=x, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    best = {}
    for pre_pad in (False, True) * rounds:
        data = DataConfig(name="cifar10", augment={"crop_padding": 2, "crop_mode": "reflect", "flip": True,
                                                    "pre_pad": pre_pad})
        pre = Preprocess(splits, data, train=True)
        source, g = pre.prepared(splits, 0).train_x, torch.Generator().manual_seed(0)
        t0 = time.process_time()
        for i in range(steps):
            pre(source.index_select(0, torch.randint(0, len(x), (512,), generator=g)), g, i)
        best[pre_pad] = min(best.get(pre_pad, 1e9), (time.process_time() - t0) / steps * 1000)
    print(f"per batch of 512, {threads} thread(s): padding each batch {best[False]:.2f} ms, from the padded "
          f"copy {best[True]:.2f} ms (CPU ms, best of {rounds} rounds of {steps} batches)")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every condition")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=10_000, help="training images (data.train_limit)")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated condition names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated condition:seed pairs already run (a continued sitting)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_airbench_ingredients"))
    ap.add_argument("--pre-pad-timing", action="store_true", help="only time data.augment.pre_pad's batches")
    ap.add_argument("--summarise", nargs="+", type=Path, help="only summarise the JSON rows of earlier logs")
    args = ap.parse_intermixed_args(argv)
    if args.summarise:  # a sitting continued in several processes (--skip): one table from all their rows
        rows = [json.loads(line) for f in args.summarise for line in f.read_text().splitlines() if line[:1] == "{"]
        summarise(rows)
        return rows
    if args.pre_pad_timing:
        print(cpu_line())
        pre_pad_timing(args.threads)
        return []
    conds = conditions(args.epochs)
    if args.only:
        conds = {k: v for k, v in conds.items() if k in args.only.split(",")}
    print(cpu_line(), flush=True)
    print(f"proxy: {RECIPE.name}, data.train_limit={args.limit}, train.epochs={args.epochs}, "
          f"train.threads={args.threads}, tta none, {args.seeds} seeds", flush=True)
    rows = []
    for seed in range(args.seeds):
        names = list(conds) if seed % 2 == 0 else list(reversed(conds))  # alternate the order between seeds
        for name in names:
            if f"{name}:{seed}" in args.skip.split(","):
                continue
            rows.append(run_one(name, conds[name], seed, args))
            print(json.dumps(rows[-1]), flush=True)
    print(cpu_line())
    summarise(rows)
    return rows


def summarise(rows: list[dict]) -> None:
    """Per condition: accuracy mean ± sd, mean train wall and whole-run CPU seconds, and against the baseline
    the mean of the per-seed accuracy differences (same seed paired) and the ratio of the mean CPU seconds."""
    base = {r["seed"]: r for r in rows if r["condition"] == "baseline"}
    for name in dict.fromkeys(r["condition"] for r in rows):
        got = [r for r in rows if r["condition"] == name]
        acc = [r["test_accuracy"] for r in got]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        t, cpu = statistics.mean(r["train_s"] for r in got), statistics.mean(r["run_cpu_s"] for r in got)
        line = f"{name:<16} {statistics.mean(acc):.2%} ± {sd:.2%} (n={len(acc)})  train {t:6.1f} s  run CPU {cpu:5.1f} s"
        pairs = [r["test_accuracy"] - base[r["seed"]]["test_accuracy"] for r in got if r["seed"] in base]
        if pairs and name != "baseline":
            ratio = cpu / statistics.mean(base[r["seed"]]["run_cpu_s"] for r in got if r["seed"] in base)
            line += f"  vs baseline: {statistics.mean(pairs):+.2%} (n={len(pairs)} pairs), CPU {ratio:.2f}x"
        print(line)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - t0:.0f} s")
