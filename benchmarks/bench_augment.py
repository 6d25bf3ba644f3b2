"""What each on-device augmentation costs (issue 27, item 7): milliseconds per batch of 256 CIFAR-size images
(3 x 32 x 32, uint8 as the trainer keeps them) and images per second, one row per augmentation of
``cnnlab.data.augment`` as a study file turns it on, plus the normalisation alone (the floor every training batch
pays) and the whole training pipeline with all of them on.

Each row calls the same functions :class:`~cnnlab.data.augment.Preprocess` and the training loop call, with the
generator the trainer uses; the batch is random uint8 pixels (the ops' cost does not depend on the content).
A row's figures are the median and the fastest of ``--repeat`` timed calls after ``--warmup`` untimed ones
(synchronised on CUDA); on a shared machine the fastest is the closer to the cost itself (the load average is
printed with them).

    .venv/bin/python benchmarks/bench_augment.py [--device cpu|cuda] [--threads N] [--repeat 30] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.config.schema import DataConfig  # noqa: E402
from cnnlab.data import augment as A  # noqa: E402
from cnnlab.training.runtime import cpu_model  # noqa: E402

BATCH, SHAPE, CLASSES = 256, (3, 32, 32), 10


class FakeSplits:
    """What Preprocess reads of the data splits, for CIFAR-size images on ``device``."""

    def __init__(self, device: torch.device):
        self.train_x = torch.zeros(1, *SHAPE, dtype=torch.uint8, device=device)
        self.in_channels, self.num_classes = SHAPE[0], CLASSES
        self.mean, self.std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def pipeline(device: torch.device, **augment):
    """The training pipeline of a study with ``data.augment`` = ``augment``: (x, y, generator) -> (x, y)."""
    pre = A.Preprocess(FakeSplits(device), DataConfig(augment=augment), train=True)

    def run(x, y, g):
        out = pre(x, g)
        return pre.mixer(out, y, g) if pre.mixer is not None else (out, y)

    return run


ROWS = [  # (row, the data.augment settings)
    ("normalise only (no augmentation)", {}),
    ("crop_padding=4 + flip", {"crop_padding": 4, "flip": True}),
    ("colour jitter 0.4/0.4/0.4/0.1", {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}),
    ("rotate=15", {"rotate": 15.0}),
    ("rotate=15 translate=0.1 scale=0.1 shear=10", {"rotate": 15.0, "translate": 0.1, "scale": 0.1, "shear": 10.0}),
    ("auto=trivial (TrivialAugmentWide)", {"auto": "trivial"}),
    ("auto=randaugment (2 ops, magnitude 9)", {"auto": "randaugment"}),
    ("mixup=0.2", {"mixup": 0.2}),
    ("cutmix=1.0", {"cutmix": 1.0}),
    ("mixup=0.2 + cutmix=1.0", {"mixup": 0.2, "cutmix": 1.0}),
    ("all: crop + flip + trivial + affine + mixup + cutmix",
     {"crop_padding": 4, "flip": True, "auto": "trivial", "rotate": 15.0, "translate": 0.1, "scale": 0.1,
      "shear": 10.0, "mixup": 0.2, "cutmix": 1.0}),
]


def time_row(fn, x, y, g, device, warmup: int, repeat: int) -> tuple[float, float]:
    """Median and fastest seconds of one call of ``fn``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn(x, y, g)
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x, y, g)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (BATCH, *SHAPE), dtype=torch.uint8, device=device, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), device=device, generator=g)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device: {device} ({where}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"batch {BATCH} x {SHAPE} uint8; {args.repeat} calls a row; load average {_load()}")
    rows = []
    for name, augment in ROWS:
        med, best = time_row(pipeline(device, **augment), x, y, g, device, args.warmup, args.repeat)
        rows.append({"augmentation": name, "ms_median": round(med * 1e3, 3), "ms_best": round(best * 1e3, 3),
                     "images_per_s": round(BATCH / best)})
    base = rows[0]["ms_best"]
    print("| data.augment | ms / batch of 256 (median) | ms (fastest) | images/s (fastest) | ms over normalising |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['augmentation']} | {r['ms_median']:.2f} | {r['ms_best']:.2f} | {r['images_per_s']:,} | "
              f"{r['ms_best'] - base:+.2f} |")
    if args.json:
        print(json.dumps({"device": str(device), "name": where, "threads": torch.get_num_threads(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
