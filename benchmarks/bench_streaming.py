"""Training throughput with the images in memory vs streamed from the memory-mapped decoded cache.

The real training loop (``cnnlab.training.loop.run``) trains a small conv net (``lenet5_cifar``) on the
CIFAR-10 JPEG copy for a fixed number of images, once with the splits in memory (the default
``data.max_memory: auto``) and once with ``data.max_memory`` too small for them, so every batch
is gathered from the cache file under ``$CNNLAB_CACHE`` (``data_placement: streamed from ...``).
The two are run alternately (A B B A A B ..., so neither always goes first), so a burst of load
from other processes on a shared machine hits both; the figure is the median of ``summary.json``'s
``train_images_per_s`` (the training loop alone: data loading and final scoring are timed apart)
and their ratio. The data path alone (``train_batches`` + the augmentation, no network) is then
timed the same way, to show what streaming itself costs per batch. With ``--cold`` the cache
file's pages are dropped from the page cache (``posix_fadvise DONTNEED``) before each streamed
measurement, so its batches are read from disk as for a set bigger than RAM.

    .venv/bin/python benchmarks/bench_streaming.py                 # 3 x (in memory, streamed)
    .venv/bin/python benchmarks/bench_streaming.py --cold --repeat 2
    .venv/bin/python benchmarks/bench_streaming.py --gather   # only the per-batch gather, in microseconds
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnlab.config.load import load_config  # noqa: E402
from cnnlab.training.loop import run  # noqa: E402
from cnnlab.training.runtime import cpu_model  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("CNNLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (only clean pages no one maps; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_run(root: Path, out: Path, images: int, threads: int, streamed: bool) -> dict:
    overrides = {
        "data.name": "cifar10", "data.root": str(root), "data.train_limit": images, "data.val_size": 1000,
        "data.augment.flip": True, "data.augment.crop_padding": 4,
        "model.name": "lenet5_cifar", "train.epochs": 1, "train.batch_size": 128, "train.progress": False,
        "train.threads": threads, "seed": 0,
    }  # fmt: skip
    if streamed:
        overrides["data.max_memory"] = "1MB"  # CIFAR-10's splits take ~0.2 GB: streamed
    return run(load_config(None, overrides), out, log=lambda message: None)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding cifar10-jpg")
    ap.add_argument("--images", type=int, default=20_000, help="training images per run (one epoch)")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (in memory, streamed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cold", action="store_true", help="drop the cache file from the page cache before streaming")
    ap.add_argument("--gather", action="store_true", help="only time one batch's gather, each way (microseconds)")
    args = ap.parse_args(argv)
    if args.gather:
        return gather(args)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, capability "
          f"{torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; python {platform.python_version()}")
    print(f"lenet5_cifar on {args.images:,} CIFAR-10 JPEG-copy images, batch 128, crop + flip, "
          f"{args.threads} thread(s), {args.repeat} x (in memory, streamed{', cold' if args.cold else ''})")
    speeds: dict[str, list[float]] = {"in memory": [], "streamed": []}
    cache_file = streamed_from(args) if args.cold else None  # known before the first streamed run
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as work:
        for i in range(args.repeat):
            for kind in (("in memory", "streamed") if i % 2 == 0 else ("streamed", "in memory")):
                streamed = kind == "streamed"
                if streamed and args.cold and cache_file is not None:
                    drop_from_page_cache(cache_file)
                summary = one_run(args.root, Path(work) / f"{i}-{kind.replace(' ', '-')}", args.images,
                                  args.threads, streamed)
                placement = summary["data_placement"]
                assert placement.startswith("streamed from ") == streamed, placement
                if streamed:
                    cache_file = Path(placement.removeprefix("streamed from "))
                speeds[kind].append(summary["time"]["train_images_per_s"])
                print(f"  run {i + 1} {kind:<9} {speeds[kind][-1]:8,.0f} images/s  ({placement})", flush=True)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    ratio = med["streamed"] / med["in memory"]
    print(f"training loop, median: in memory {med['in memory']:,.0f} images/s, streamed {med['streamed']:,.0f} "
          f"images/s; streamed / in memory = {ratio:.2f}x")
    path_speeds = data_path(args, cache_file)
    path_med = {k: statistics.median(v) for k, v in path_speeds.items()}
    path_ratio = path_med["streamed"] / path_med["in memory"]
    print(f"data path alone, median: in memory {path_med['in memory']:,.0f} images/s, streamed "
          f"{path_med['streamed']:,.0f} images/s; streamed / in memory = {path_ratio:.2f}x")
    return {"median": med, "ratio": ratio, "runs": speeds, "data_path": path_med, "data_path_ratio": path_ratio}


def streamed_from(args) -> Path:
    """The cache file the streamed runs read (loading the set once, which also writes it if missing)."""
    from cnnlab import data as datamod
    from cnnlab.config.schema import DataConfig

    splits = datamod.load_splits(DataConfig(name="cifar10", root=str(args.root), download=False, max_memory="1MB"))
    return Path(splits.placement.removeprefix("streamed from "))


def gather(args) -> dict:
    """Microseconds to gather one batch of 128 training images by a random permutation: advanced indexing
    and index_select of an in-memory split, and HostImages over the memory-mapped cache (warm page cache)."""
    from cnnlab import data as datamod
    from cnnlab.config.schema import DataConfig

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()} (capability {torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; "
          f"{args.threads} thread(s)")
    settings = dict(name="cifar10", root=str(args.root), download=False, train_limit=args.images, val_size=1000)
    held = datamod.load_splits(DataConfig(**settings), "cpu").train_x
    streamed = datamod.load_splits(DataConfig(**settings, max_memory="1MB")).train_x
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(len(held), generator=g)[:128] for _ in range(200)]
    ways = {"in memory, x[idx]": lambda p: held[p], "in memory, index_select": lambda p: held.index_select(0, p),
            "memory map, HostImages": lambda p: streamed[p]}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(5):  # alternated, the best of 5 rounds of 200 batches each
        for name, fn in ways.items():
            t0 = time.perf_counter()
            for p in perms:
                fn(p)
            times[name].append((time.perf_counter() - t0) / len(perms) * 1e6)
    best = {k: min(v) for k, v in times.items()}
    for name, us in best.items():
        print(f"  {name:<26} {us:8,.0f} us per batch of 128")
    return best


def data_path(args, cache_file) -> dict[str, list[float]]:
    """Images/s of ``train_batches`` + augmentation alone (no network), both placements alternated."""
    from cnnlab.data import augment
    from cnnlab import data as datamod
    from cnnlab.config.schema import DataConfig

    settings = dict(name="cifar10", root=str(args.root), download=False, train_limit=args.images, val_size=1000,
                    augment={"crop_padding": 4, "flip": True})
    out: dict[str, list[float]] = {"in memory": [], "streamed": []}
    for i in range(args.repeat):
        for kind in (("in memory", "streamed") if i % 2 == 0 else ("streamed", "in memory")):
            if kind == "streamed" and args.cold and cache_file is not None:
                drop_from_page_cache(cache_file)
            cfg = DataConfig(**settings, **({"max_memory": "1MB"} if kind == "streamed" else {}))
            splits = datamod.load_splits(cfg, "cpu")
            pre, gen = augment.Preprocess(splits, cfg, train=True), torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            for x, y in datamod.train_batches(splits.train_x, splits.train_y, 128, seed=0, epoch=i):
                pre(x, gen)
            out[kind].append(len(splits.train_y) / (time.perf_counter() - t0))
            print(f"  data path {i + 1} {kind:<9} {out[kind][-1]:9,.0f} images/s", flush=True)
    return out


if __name__ == "__main__":
    main()
