"""Training throughput of cnnlab's data path against the usual torchvision one, in one process.

Both sides run the same network, batch size, precision, optimizer and train step; only the
way a batch reaches the step differs. cnnlab's side keeps the whole split on the device as
uint8 (``data.load_splits``), takes slices of one permutation per epoch (``data.train_batches``,
as training does) and augments + normalises the whole batch at once (``augment.Preprocess``). The conventional side
is ``torchvision.datasets.MNIST`` (or ``ImageFolder`` on the CIFAR-10 JPEG copy) with a
``DataLoader`` and per-sample ``ToTensor``/``Normalize`` (+ ``RandomCrop``/``RandomHorizontalFlip``).
The two are measured alternately several times, so a burst of load from other processes on a
shared machine hits both; the figure printed is the median of each and their ratio. Data set
loading (files → tensors) is timed apart and is not in images/s.

    .venv/bin/python benchmarks/bench_datapath.py                       # LeNet-5 / MNIST
    .venv/bin/python benchmarks/bench_datapath.py --task resnet20-cifar # ResNet-20 / CIFAR-10 JPEG copy
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cnnlab.models  # noqa: E402,F401 - fills the registry
from cnnlab.data import augment  # noqa: E402
from cnnlab import data as datamod  # noqa: E402
from cnnlab.config.schema import DataConfig  # noqa: E402
from cnnlab.registry import MODELS  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("CNNLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))

TASKS = {
    # name: model, data set, input channels, augmentation, images per timed repeat
    "lenet5-mnist": dict(model="lenet5", data="mnist", channels=1, crop=0, flip=False, images=20_000),
    "resnet20-cifar": dict(model="resnet20", data="cifar10", channels=3, crop=4, flip=True, images=2_560),
}


# ----------------------------------------------------------------------------- the shared train step


def make_step(task: dict, precision: str, channels_last: bool, seed: int = 0):
    """A fresh model + Adam (foreach) and the one train step both pipelines call."""
    torch.manual_seed(seed)
    model = MODELS.get(task["model"])(num_classes=10, in_channels=task["channels"])
    size = 28 if task["data"] == "mnist" else 32
    with torch.no_grad():
        model.eval()(torch.zeros(2, task["channels"], size, size))  # gives lazy layers their size
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext())

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()  # no .item(): the host never waits inside the loop

    return step


# ----------------------------------------------------------------------------- the two pipelines


def cnnlab_pipeline(task: dict, root: Path, batch_size: int):
    t0 = time.perf_counter()
    cfg = DataConfig(name=task["data"], root=str(root), download=False,
                     augment={"crop_padding": task["crop"], "flip": task["flip"]})
    splits = datamod.load_splits(cfg, "cpu")
    pre = augment.Preprocess(splits, cfg, train=True)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)

    def epoch_batches():
        epoch = 0
        while True:
            for x, y in datamod.train_batches(splits.train_x, splits.train_y, batch_size, seed=0, epoch=epoch):
                yield pre(x, gen), y
            epoch += 1

    return epoch_batches(), load_s


def torchvision_pipeline(task: dict, root: Path, batch_size: int, workers: int):
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision import datasets

    t0 = time.perf_counter()
    if task["data"] == "mnist":
        tf = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
        ds = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    else:
        tf = T.Compose([T.RandomCrop(32, padding=task["crop"]), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize((0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606))])
        ds = datasets.ImageFolder(str(root / "cifar10-jpg" / "train"), transform=tf)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    load_s = time.perf_counter() - t0

    def epoch_batches():
        while True:
            yield from loader

    return epoch_batches(), load_s


def timed(batches, step, images: int, batch_size: int) -> float:
    """Images per second over ``images`` images (whole batches), data loading included."""
    steps = max(1, images // batch_size)
    t0 = time.perf_counter()
    last = None
    for _ in range(steps):
        x, y = next(batches)
        last = step(x, y)
    float(last)  # one sync at the end (a no-op on CPU, needed on GPU)
    return steps * batch_size / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="lenet5-mnist")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding MNIST/raw and cifar10-jpg")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers on the conventional side")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=None, help="images per timed repeat")
    args = ap.parse_args(argv)
    task = TASKS[args.task]
    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.images or task["images"]
    ours, ours_load = cnnlab_pipeline(task, args.root, args.batch_size)
    theirs, theirs_load = torchvision_pipeline(task, args.root, args.batch_size, args.workers)
    step_ours = make_step(task, args.precision, args.channels_last)
    step_theirs = make_step(task, args.precision, args.channels_last)
    # warm-up: first calls allocate and pick kernels
    timed(ours, step_ours, 5 * args.batch_size, args.batch_size)
    timed(theirs, step_theirs, 5 * args.batch_size, args.batch_size)
    rates = {"cnnlab": [], "torchvision": []}
    for r in range(args.repeats):
        rates["cnnlab"].append(timed(ours, step_ours, images, args.batch_size))
        rates["torchvision"].append(timed(theirs, step_theirs, images, args.batch_size))
        print(f"repeat {r + 1}: cnnlab {rates['cnnlab'][-1]:,.0f} img/s, torchvision "
              f"{rates['torchvision'][-1]:,.0f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["cnnlab"] / med["torchvision"]
    ratios = [a / b for a, b in zip(rates["cnnlab"], rates["torchvision"])]
    print(f"\n{args.task}, batch {args.batch_size}, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}, {torch.get_num_threads()} threads, "
          f"{args.workers} DataLoader workers, {images:,} images x {args.repeats} repeats "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"GLIBC_TUNABLES={'set' if os.environ.get('GLIBC_TUNABLES') else 'unset'})")
    print(f"| pipeline | images/s (median) | load s |\n| --- | --- | --- |")
    print(f"| torchvision dataset + DataLoader + per-sample transforms | {med['torchvision']:,.0f} | {theirs_load:.1f} |")
    print(f"| cnnlab device-resident uint8 + batched Preprocess | {med['cnnlab']:,.0f} | {ours_load:.1f} |")
    print(f"ratio cnnlab / torchvision: {ratio:.2f}x (median); per repeat "
          + ", ".join(f"{x:.2f}" for x in ratios))
    return {"median": med, "ratio": ratio, "load_s": {"cnnlab": ours_load, "torchvision": theirs_load}}


if __name__ == "__main__":
    main()
