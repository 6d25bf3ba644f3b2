"""How long does `cnnlab report SWEEP_DIR` take, and what does reusing run pages and curves.png save?

A sweep writes each run's curves.png but not its report.html; `cnnlab report SWEEP_DIR` builds the run
pages it links to. It reuses a run page newer than the run's files (only missing or stale pages are
built) and embeds a current curves.png instead of drawing the curves again; `--force` draws everything,
which is what every first report cost before (issue 15). Measured in this process's CPU seconds (less
swayed by other jobs on a shared machine than wall time), on a copy of the sweep folder each time:

    fresh     no run page yet: every page built, curves.png reused
    force     every page built and every figure drawn (`--force`; a first report before issue 15)
    current   every page current: only the sweep page
    one_stale one run's summary.json newer than its page (a resumed run): that page and the sweep page

Without --sweep it first runs a tiny real sweep (MNIST, 500 training images, 1 epoch, one thread;
--settings x --seeds runs) into a temporary folder.

    .venv/bin/python benchmarks/bench_report.py                      # 4 settings x 3 seeds = 12 runs
    .venv/bin/python benchmarks/bench_report.py --sweep runs/study_e # an existing sweep folder (copied)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from cnnlab.reporting import results  # noqa: E402
from cnnlab.reporting import html as report
from cnnlab.training.runtime import cpu_model  # noqa: E402
from cnnlab.sweeps.run import run_sweep  # noqa: E402


def tiny_sweep(folder: Path, settings: int, seeds: int) -> Path:
    spec = {"base": {"name": "bench_report", "data": {"name": "mnist", "train_limit": 500, "val_size": 500},
                     "model": {"name": "lenet5"}, "optim": {"name": "adam", "lr": 0.001},
                     "train": {"epochs": 1, "batch_size": 50, "threads": 1, "progress": False}},
            "axes": {"optim.lr": [round(0.0005 * 2 ** i, 6) for i in range(settings)]}, "seeds": seeds}
    path = folder / "bench_report.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = folder / "sweep"
    run_sweep(path, out_dir=out)
    return out


def timed(sweep: Path, force: bool) -> tuple[float, dict]:
    counts: dict = {}
    t0 = time.process_time()
    report.build_report(sweep, log=lambda m: None, force=force, counts=counts)
    return time.process_time() - t0, counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, help="an existing sweep folder (copied; the original is not touched)")
    p.add_argument("--settings", type=int, default=4, help="learning rates of the tiny sweep (default 4)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the tiny sweep (default 3)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_report-") as tmp:
        tmp = Path(tmp)
        source = args.sweep or tiny_sweep(tmp, args.settings, args.seeds)
        rows = results.load_results(source, log=None)
        figures = {}
        for case in ("fresh", "force", "current", "one_stale"):
            work = tmp / f"copy_{case}"
            shutil.copytree(source, work, symlinks=True)
            for page in work.glob("runs/*/report.html"):
                page.unlink()
            if case in ("current", "one_stale"):
                timed(work, force=False)  # the pages exist and are current
            if case == "one_stale":
                os.utime(work / rows[0]["run_dir"] / "summary.json")
            figures[case] = timed(work, force=case == "force")
    print(f"CPU: {cpu_model()}; {len(rows)} runs in {source if args.sweep else 'a tiny MNIST sweep'}")
    for case, (seconds, counts) in figures.items():
        print(f"  {case:<10} {seconds:6.2f} s CPU  (run pages: {counts.get('built')} built, "
              f"{counts.get('current')} up to date)")
    n = max(1, figures["force"][1].get("built") or 1)
    print(f"  per run page: {figures['force'][0] / n:.2f} s drawn in full, {figures['fresh'][0] / n:.2f} s "
          "with curves.png reused (sweep page included in both)")


if __name__ == "__main__":
    main()
