"""The fast-MNIST record's method (tuomaso/train_mnist_fast, final configuration: 99.04 % in 0.76 s
on a GTX 1660 Ti), written by us from its description as the peer for bench_speedrun_mnist.py.

One file, top to bottom: all 60,000 training images as one normalised float tensor on the device;
a conv5×5(24) → max-pool → ReLU → conv3×3(32) → max-pool → ReLU → fc(256) → ReLU → fc(10) net;
one epoch at batch 256 (235 steps, the last one short); Adam lr 1e-2 with short-memory betas
(0.7, 0.9) kept fixed (no momentum cycling); a one-cycle schedule stepped every iteration; scored once on
the 10,000 test images.
Ported to a CPU with the smallest changes: channels_last (oneDNN's convolutions are faster so)
and bf16 autocast only when asked (native on AVX-512 BF16 / AMX CPUs, emulated and slow elsewhere).

    python benchmarks/peers/mnist_record.py DATA_ROOT [--seed 0] [--threads 2] [--no-channels-last] [--bf16]
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- data


def read_idx(path: Path) -> torch.Tensor:
    """An uncompressed IDX file (the MNIST format) as a uint8 tensor."""
    raw = path.read_bytes()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).copy()).reshape(shape)


def load_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [N, 1, 28, 28] normalised by the training set's mean / std, labels as int64."""
    stem = "train" if train else "t10k"
    x = read_idx(root / "MNIST" / "raw" / f"{stem}-images-idx3-ubyte").float().div_(255).unsqueeze(1)
    y = read_idx(root / "MNIST" / "raw" / f"{stem}-labels-idx1-ubyte").long()
    return (x - 0.1307) / 0.3081, y


# ----------------------------------------------------------------------------- network


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5)   # 28 → 24 px
        self.conv2 = nn.Conv2d(24, 32, 3)  # 12 → 10 px
        self.fc1 = nn.Linear(32 * 5 * 5, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


# ----------------------------------------------------------------------------- train and score


def run(root: Path, seed: int = 0, channels_last: bool = True, bf16: bool = False, data=None) -> dict:
    """One training run; returns test accuracy and the training loop's wall and CPU seconds (data loading
    and the final scoring are timed apart). ``data``: (train_x, train_y, test_x, test_y) already loaded."""
    train_x, train_y, test_x, test_y = data or (*load_mnist(root, True), *load_mnist(root, False))
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = Net().to(memory_format=fmt)
    batch, epochs, lr = 256, 1, 1e-2
    steps = epochs * -(-len(train_y) // batch)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.7, 0.9))
    # the record keeps Adam's betas fixed: without cycle_momentum=False torch would cycle beta1 over 0.85-0.95
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, cycle_momentum=False)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        perm = torch.randperm(len(train_y))
        for i in range(0, len(train_y), batch):
            idx = perm[i:i + batch]
            xb = train_x[idx].contiguous(memory_format=fmt)
            with amp():
                loss = F.nll_loss(net(xb), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    correct = 0
    with torch.inference_mode(), amp():
        for i in range(0, len(test_y), 2000):
            out = net(test_x[i:i + 2000].contiguous(memory_format=fmt))
            correct += int((out.argmax(1) == test_y[i:i + 2000]).sum())
    return {"method": "mnist_record", "seed": seed, "test_accuracy": correct / len(test_y),
            "train_s": round(train_s, 3), "train_cpu_s": round(train_cpu_s, 3), "eval_s": round(time.perf_counter() - t1, 3), "steps": steps,
            "channels_last": channels_last, "bf16": bf16}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="folder holding MNIST/raw/*-idx?-ubyte")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    row = run(args.root, args.seed, not args.no_channels_last, args.bf16)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
