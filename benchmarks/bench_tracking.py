"""What tracking costs a run: MLflow's import, and each evaluation point sent to MLflow or TensorBoard.

A tracker runs in the training process at each evaluation point (:mod:`cnnlab.training.tracking`), so its cost
is paid once per point, plus once per process for importing mlflow (each ``--workers`` process of a
sweep pays that). Measured without training: a run folder gets realistic ``metrics.jsonl`` rows one
at a time and each tracker is told, as the trainer would; the figures are medians of the calls, in
wall and CPU milliseconds. ``--server URL`` adds a running MLflow server (``mlflow server --host
127.0.0.1 --port 5000``).

    .venv/bin/python benchmarks/bench_tracking.py                        # file: store and TensorBoard
    .venv/bin/python benchmarks/bench_tracking.py --server http://127.0.0.1:5000
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnlab import runs  # noqa: E402
from cnnlab.training import tracking  # noqa: E402
from cnnlab.config.schema import validate  # noqa: E402
from cnnlab.training.runtime import cpu_model  # noqa: E402


def import_seconds(reps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``import mlflow`` in a fresh interpreter (minus a bare one)."""
    def once(code: str) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), os.times()
        subprocess.run([sys.executable, "-c", code], check=True)
        c1 = os.times()
        return time.perf_counter() - t0, (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)

    walls, cpus = [], []
    for _ in range(reps):
        bare, with_mlflow = once("pass"), once("import mlflow; from mlflow import MlflowClient")
        walls.append(with_mlflow[0] - bare[0])
        cpus.append(with_mlflow[1] - bare[1])
    return statistics.median(walls), statistics.median(cpus)


def row(step: int) -> dict:
    return {"step": step, "epoch": step / 500, "lr": 0.001, "train_loss": 1.0 / step, "train_accuracy": 0.9,
            "val_loss": 1.1 / step, "val_accuracy": 0.88, "elapsed_s": step * 0.01}


def per_point(make, folder: Path, points: int) -> tuple[float, float, float]:
    """Median wall and CPU ms of one on_eval, and wall ms of on_finish + close, for a tracker ``make()``."""
    folder.mkdir(parents=True)
    tracker = make(folder)
    walls, cpus = [], []
    for i in range(1, points + 1):
        r = row(100 * i)
        runs.append_jsonl(folder / "metrics.jsonl", r)
        t0, c0 = time.perf_counter(), time.process_time()
        tracker.on_eval(r)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    runs.write_json(folder / "summary.json", {"status": "completed", "seed": 0, "time": {"steps": 100 * points}})
    t0 = time.perf_counter()
    tracker.on_finish({"status": "completed", "test": {"accuracy": 0.9}, "time": {"steps": 100 * points}})
    tracker.close()
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3, (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=30, help="evaluation points per tracker")
    ap.add_argument("--server", help="an MLflow tracking server to measure too, e.g. http://127.0.0.1:5000")
    ap.add_argument("--import-reps", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    wall, cpu = import_seconds(args.import_reps)
    print(f"import mlflow: {wall:.2f} s wall, {cpu:.2f} s CPU (median of {args.import_reps}, once per process)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stores = {"MLflow file: store": f"file:{tmp / 'store'}"}
        if args.server:
            stores[f"MLflow {args.server}"] = args.server
        cases = {name: (lambda folder, uri=uri: tracking.MLflow(validate({"name": "bench", "train": {"mlflow": uri}}),
                                                               folder)) for name, uri in stores.items()}
        cases["TensorBoard"] = lambda folder: tracking.TensorBoard(folder)
        print(f"{'tracker':<40} {'per point (wall)':>17} {'per point (CPU)':>16} {'end of run (wall)':>18}")
        for i, (name, make) in enumerate(cases.items()):
            wall_ms, cpu_ms, end_ms = per_point(make, tmp / f"run{i}", args.points)
            print(f"{name:<40} {wall_ms:>14.1f} ms {cpu_ms:>13.1f} ms {end_ms:>15.0f} ms")


if __name__ == "__main__":
    main()
