"""airbench94's method (Keller Jordan's cifar10-airbench: 94.01 % mean on CIFAR-10 in 3.83 s on an A100),
written by us from its description as the peer for bench_speedrun_cifar.py.

The method, top to bottom:
- data: all 50,000 training images normalised once (channel mean / std) as one float tensor on the
  device; each image mirrored by a coin drawn once, then all of them mirrored together on every odd epoch
  (each image alternates); the set reflect-padded by 2 pixels once, and each epoch a random 32×32 window
  per image (translation by up to 2 pixels); batches of 1,024 from a fresh permutation, the short last
  batch dropped.
- network: a fixed 2×2 conv whose 24 filters whiten image patches (eigenvectors of the patch covariance of
  5,000 training images over the square root of their eigenvalues + 5e-4, and their negatives) with a learned
  bias; GELU; three blocks of [3×3 conv (no bias, first filters identity) → 2×2 max-pool → batch norm →
  GELU → 3×3 conv → batch norm → GELU] of widths 64 / 256 / 256; 3×3 max-pool; linear (no bias) to 10
  classes; outputs × 1/9. Batch norms learn only a shift (eps 1e-12, keep 0.6 of the running statistics).
- training: 9.9 epochs (476 steps); loss = label-smoothed (0.2) cross-entropy summed over the batch;
  Nesterov SGD, momentum 0.85, lr 11.5 per 1,024 examples divided by 1 + 1/(1 − momentum), decoupled weight
  decay 0.0153 per 1,024 examples; the batch-norm shifts at 64× that lr with the same absolute decay; lr
  factor a triangle 0.2 → 1 at 23 % of the steps → 0.07 at the end; the whitening bias trains for the first
  3 epochs only. From epoch 3 on, every 5 steps a slow copy moves toward the weights with decay
  0.95⁵ · (step / total)³ and the weights are reset to it; after each such epoch the weights become the copy.
- scoring: the 10,000 test images, logits averaged as ½ · (image, mirror) + ½ · mean over the two one-pixel
  diagonal shifts (reflect-padded) of (shifted, mirrored shifted).

Ported to a CPU with the smallest changes: fp32 weights with bf16 autocast where the CPU runs bf16 natively
(else plain fp32) instead of fp16 weights on a GPU; channels_last; the per-epoch test pass (logging only)
left out; time.perf_counter instead of CUDA events. Training seconds = whitening init + the epochs' steps.

    python benchmarks/peers/airbench94.py DATA_ROOT [--seed 0] [--threads 2] [--bf16] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HYP = {"epochs": 9.9, "batch": 1024, "lr": 11.5, "momentum": 0.85, "wd": 0.0153, "bias_lr": 64.0, "smooth": 0.2,
       "avg_start": 3, "avg_base": 0.95, "avg_pow": 3.0, "avg_every": 5, "whiten_bias_epochs": 3,
       "translate": 2, "width": 64, "bn_keep": 0.6, "scale": 1 / 9}

# ----------------------------------------------------------------------------- data


def load_jpg_folder(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cifar10-jpg/<split>/<class>/*.jpg as uint8 [N, 3, 32, 32] and int64 labels (classes in CIFAR order)."""
    from torchvision.io import decode_jpeg, read_file

    images, labels = [], []
    for k, name in enumerate(CLASSES):
        for f in sorted((root / "cifar10-jpg" / split / name).glob("*.jpg")):
            images.append(decode_jpeg(read_file(str(f))))
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x_uint8.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)


def random_windows(padded: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A size×size window per image at a uniform offset in 0..2r (r = the padding) on each axis."""
    r = (padded.shape[-1] - size) // 2
    shifts = torch.randint(0, 2 * r + 1, (len(padded), 2), generator=g)
    out = torch.empty(len(padded), padded.shape[1], size, size, dtype=padded.dtype)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[sel] = padded[sel, :, dy:dy + size, dx:dx + size]
    return out.contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- network


class ShiftBatchNorm(nn.BatchNorm2d):
    def __init__(self, c: int):
        super().__init__(c, eps=1e-12, momentum=1 - HYP["bn_keep"])
        self.weight.requires_grad_(False)  # the scale stays 1; only the shift learns


class IdentityConv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:cin])


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.norm1 = IdentityConv(cin, cout), ShiftBatchNorm(cout)
        self.conv2, self.norm2 = IdentityConv(cout, cout), ShiftBatchNorm(cout)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self, width: int = HYP["width"]):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.blocks = nn.Sequential(Block(24, width), Block(width, 4 * width), Block(4 * width, 4 * width))
        self.head = nn.Linear(4 * width, 10, bias=False)

    def forward(self, x):
        x = self.blocks(F.gelu(self.whiten(x)))
        return self.head(F.max_pool2d(x, 3).flatten(1)) * HYP["scale"]


@torch.no_grad()
def set_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    c, k = images.shape[1], layer.kernel_size[0]
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    values, vectors = values.flip(0), vectors.T.flip(0)  # largest first
    filters = (vectors / (values + eps).sqrt()[:, None]).reshape(-1, c, k, k)
    layer.weight.copy_(torch.cat([filters, -filters]))


# ----------------------------------------------------------------------------- training


def lr_factor(steps: int) -> torch.Tensor:
    """The per-step lr factor: linear 0.2 → 1 up to 23 % of the steps, then linear to 0.07."""
    peak = int(0.23 * steps)
    x = torch.arange(steps + 1, dtype=torch.float64)
    up = 0.2 + (1 - 0.2) * x / max(peak, 1)
    down = 1 + (0.07 - 1) * (x - peak) / max(steps - peak, 1)
    return torch.where(x < peak, up, down)


class SlowCopy:
    def __init__(self, net: nn.Module):
        self.live = [t for t in net.state_dict().values() if t.is_floating_point()]
        self.slow = [t.clone() for t in self.live]

    @torch.no_grad()
    def pull(self, decay: float) -> None:
        for s, w in zip(self.slow, self.live):
            s.lerp_(w, 1 - decay)
            w.copy_(s)


def tta_logits(net: nn.Module, x: torch.Tensor, autocast) -> torch.Tensor:
    def mirror(v):
        with autocast():
            return 0.5 * net(v).float() + 0.5 * net(v.flip(-1)).float()

    padded = F.pad(x, (1,) * 4, mode="reflect")
    shifted = [padded[:, :, 0:32, 0:32].contiguous(memory_format=torch.channels_last),
               padded[:, :, 2:34, 2:34].contiguous(memory_format=torch.channels_last)]
    return 0.5 * mirror(x) + 0.5 * torch.stack([mirror(s) for s in shifted]).mean(0)


def build(width: int, bs: int, total: int):
    """The network (channels_last), Nesterov SGD with the shifts' 64x lr, the schedule over ``total`` steps,
    the loss."""
    mom = HYP["momentum"]
    kilostep = 1024 * (1 + 1 / (1 - mom))
    lr, wd = HYP["lr"] / kilostep, HYP["wd"] * bs / kilostep
    net = Net(width).to(memory_format=torch.channels_last)
    norm = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    other = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    bias_lr = lr * HYP["bias_lr"]
    opt = torch.optim.SGD([dict(params=norm, lr=bias_lr, weight_decay=wd / bias_lr),
                           dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=mom, nesterov=True)
    factors = lr_factor(total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(factors[min(i, total)]))
    return net, opt, sched, nn.CrossEntropyLoss(label_smoothing=HYP["smooth"], reduction="sum")


def prepare(net: Net, train_x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Normalise, set the whitening filters, mirror each image by a coin, reflect-pad: the padded set."""
    images = normalise(train_x)
    set_whitening(net.whiten, images[:5000])
    coins = torch.rand(len(images), generator=g) < 0.5
    images = torch.where(coins.view(-1, 1, 1, 1), images.flip(-1), images)
    return F.pad(images, (HYP["translate"],) * 4, mode="reflect")


def epoch_source(padded: torch.Tensor, epoch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An epoch's windows (all mirrored on odd epochs) and its order."""
    batch_src = random_windows(padded, 32, g)
    if epoch % 2 == 1:
        batch_src = batch_src.flip(-1)
    return batch_src, torch.randperm(len(padded), generator=g)


def train_step(net, opt, sched, loss_fn, x, y, autocast) -> None:
    with autocast():
        loss = loss_fn(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def step_seconds(train_x: torch.Tensor, train_y: torch.Tensor, steps: int, warmup: int, bs: int = 512,
                 bf16: bool = False, width: int = HYP["width"], seed: int = 0) -> tuple[float, float]:
    """(wall, CPU) seconds per training step at batch ``bs`` (bench_speedrun_cifar.py --steps): ``warmup``
    untimed steps of an epoch 0, then a timed epoch 1 of ``steps`` steps over the first ``steps`` · ``bs``
    images, its windows and order included (a full run draws them once an epoch, as here) and the slow copy
    pulled every 5 steps (as on epochs 3 on, 70 % of a full run's steps)."""
    n = steps * bs
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    total = warmup + steps
    net, opt, sched, loss_fn = build(width, bs, total)
    x, y = train_x[:n], train_y[:n]
    padded = prepare(net, x, g)
    net.train()
    batch_src, order = epoch_source(padded, 0, g)
    for i in range(warmup):
        idx = order[i * bs:(i + 1) * bs]
        train_step(net, opt, sched, loss_fn, batch_src[idx], y[idx], autocast)
    slow = SlowCopy(net)
    base = HYP["avg_base"] ** HYP["avg_every"]
    t0, c0 = time.perf_counter(), time.process_time()
    batch_src, order = epoch_source(padded, 1, g)
    for i in range(steps):
        idx = order[i * bs:(i + 1) * bs]
        train_step(net, opt, sched, loss_fn, batch_src[idx], y[idx], autocast)
        if (warmup + i + 1) % HYP["avg_every"] == 0:
            slow.pull(base * ((warmup + i + 1) / total) ** HYP["avg_pow"])
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def run(seed: int = 0, bf16: bool = False, data=None, root: Path | None = None, limit: int | None = None,
        epochs: float | None = None, test_limit: int | None = None, width: int = HYP["width"]) -> dict:
    """One training run and its scoring; ``data``: (train_x, train_y, test_x, test_y) uint8 / int64 tensors;
    ``limit`` / ``test_limit`` / ``width``: a subset of each split, a narrower net (a smoke test)."""
    train_x, train_y, test_x, test_y = data if data is not None else (*load_jpg_folder(root, "train"),
                                                                       *load_jpg_folder(root, "test"))
    if limit:  # a fixed random subset (the folder is in class order)
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))[:limit]
        train_x, train_y = train_x[keep], train_y[keep]
    if test_limit:  # evenly spaced: every class
        keep = torch.linspace(0, len(test_y) - 1, test_limit).long()
        test_x, test_y = test_x[keep], test_y[keep]
    epochs = epochs or HYP["epochs"]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    bs = HYP["batch"]
    steps_per_epoch = max(1, len(train_y) // bs)
    total = math.ceil(steps_per_epoch * epochs)
    net, opt, sched, loss_fn = build(width, bs, total)

    t0 = time.perf_counter()
    padded = prepare(net, train_x, g)
    n = len(padded)
    slow, step = None, 0
    for epoch in range(math.ceil(epochs)):
        net.whiten.bias.requires_grad_(epoch < HYP["whiten_bias_epochs"])
        batch_src, order = epoch_source(padded, epoch, g)
        net.train()
        for i in range(steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            train_step(net, opt, sched, loss_fn, batch_src[idx], train_y[idx], autocast)
            step += 1
            if epoch >= HYP["avg_start"] and step % HYP["avg_every"] == 0:
                if slow is None:
                    slow = SlowCopy(net)
                else:
                    base = HYP["avg_base"] ** HYP["avg_every"]
                    slow.pull(base * (step / total) ** HYP["avg_pow"])
            if step >= total:
                break
        if slow is not None:
            slow.pull(1.0)
    train_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    net.eval()
    with torch.no_grad():
        x = normalise(test_x)
        logits = torch.cat([tta_logits(net, x[i:i + 2000], autocast) for i in range(0, len(x), 2000)])
        plain = torch.cat([net(x[i:i + 2000]).float() for i in range(0, len(x), 2000)])
    return {"method": "airbench94", "seed": seed, "test_accuracy": float((logits.argmax(1) == test_y).float().mean()),
            "test_accuracy_no_tta": float((plain.argmax(1) == test_y).float().mean()), "train_s": round(train_s, 3),
            "eval_s": round(time.perf_counter() - t1, 3), "steps": step, "bf16": bf16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the data root holding cifar10-jpg/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU runs bf16 natively)")
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 2,000 images at width 16, 500 test images: checks that it runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    smoke = dict(limit=2000, epochs=1, test_limit=500, width=16) if args.smoke else {}
    print(json.dumps(run(args.seed, args.bf16, root=args.root, **smoke)))


if __name__ == "__main__":
    main()
