"""Time to accuracy of a speed-run recipe over several seeds: mean test accuracy ± sd and the
median training wall time, with data loading and evaluation reported apart.

Each seed is one ``cnnlab.training.loop.run`` in this process (what ``cnnlab train`` does), into its
own folder under ``--out``. Training time is the trainer's own ``time.train_s`` (the step
loop, including the per-epoch validation passes); ``data_s`` is files → device tensors
(the CIFAR JPEG copy is decoded once and cached, so its first run loads slower);
``eval_s`` is the final scoring of train/val/test. With ``train.compile=true`` the first
steps include compilation, which shows as a higher first-epoch time in ``epoch_s``.

    .venv/bin/python benchmarks/bench_time_to_accuracy.py recipes/speedrun/mnist_99_0_2s.yaml --seeds 5
    .venv/bin/python benchmarks/bench_time_to_accuracy.py recipes/speedrun/cifar10_91_10min.yaml --seeds 1 train.threads=2
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
os.environ.setdefault("CNNLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

from cnnlab.training import loop as train  # noqa: E402
from cnnlab.config.load import load_config  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/speedrun"))
    ap.add_argument("--target", type=float, default=None, help="accuracy target (0-1) to report against")
    args = ap.parse_intermixed_args(argv)  # overrides may come after the options
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cfg = load_config(args.recipe, [*args.overrides, f"seed={seed}"])
        out = args.out / f"{args.recipe.stem}-seed{seed}"
        t0 = time.perf_counter()
        s = train.run(cfg, out, force=True, log=lambda *_: None)
        t = s["time"]
        rows.append({"seed": seed, "status": s["status"], "test_accuracy": s["test"]["accuracy"],
                     "train_s": t["train_s"], "data_s": t["data_s"], "eval_s": t["eval_s"],
                     "total_s": t["total_s"], "wall_s": round(time.perf_counter() - t0, 2),
                     "images_per_s": t["train_images_per_s"], "epoch_s": t["epoch_s"]})
        print(json.dumps(rows[-1]), flush=True)
    acc = [r["test_accuracy"] for r in rows]
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    med = {k: statistics.median(r[k] for r in rows) for k in ("train_s", "data_s", "eval_s", "total_s", "images_per_s")}
    line = (f"{args.recipe.stem} {' '.join(args.overrides)}: test accuracy {statistics.mean(acc):.2%} ± {sd:.2%} "
            f"(n={len(acc)}, min {min(acc):.2%}); median train {med['train_s']:.1f} s "
            f"({med['images_per_s']:,.0f} img/s), data {med['data_s']:.1f} s, final eval {med['eval_s']:.1f} s, "
            f"total {med['total_s']:.1f} s")
    if args.target is not None:
        line += f"; target {args.target:.1%} {'met' if statistics.mean(acc) >= args.target else 'MISSED'}"
    print(line)
    return {"rows": rows, "summary": line}


if __name__ == "__main__":
    main()
