"""Why the model decided: Grad-CAM heat maps (``cnnlab explain RUN FILES...``, ``cnnlab.explain``).

Grad-CAM (Selvaraju et al., 2017): the feature maps A of the network's last convolution (the last one its forward
pass runs whose maps are at least 4 x 4, found by a forward hook on every ``nn.Conv2d``) are weighted by the spatial mean of the class score's
gradient with respect to them, summed over channels and passed through a ReLU:

    cam = ReLU( sum_k  mean_ij(d score_c / d A_k[i, j]) * A_k )

then resized to the input (bilinear) and scaled to [0, 1] per image (minus its minimum, over its range). The class score is the network's output for
class ``c`` (the predicted class unless another is asked for): the logit, or for a network that ends in a
log-softmax (output_kind ``log_probs``) or a softmax (``probs``) the log-probability. A network without a
convolution (an MLP) has no feature maps to weigh: refused in one paragraph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab import runs
from cnnlab.config.schema import ConfigError
from cnnlab.data import DataError
from cnnlab.inference.load import LoadedRun, to_probs
from cnnlab.inference.predict import find_images

BATCH = 32
ALPHA = 0.45  # the heat map's opacity over the image
MIN_SIDE = 4  # the smallest feature maps (per side) Grad-CAM weighs, when a larger convolution came before


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None,
             output_kind: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``[N, H, W]`` in [0, 1] of a float input batch ``x`` ``[N, C, H, W]`` (the model's input form)
    for the classes ``target`` ``[N]`` (default: the predicted ones), and the model's outputs ``[N, classes]``."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"explain: the network ({type(model).__name__}) has no convolution layer, so Grad-CAM has "
                          "no feature maps to weigh; explain a run of a convolutional model (lenet5, resnet20, ...)")
    seen: list[torch.Tensor] = []  # every convolution's output, in the order the forward pass ran them
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in convs]
    try:
        with torch.enable_grad():
            out = model(x.detach().float().requires_grad_(True))  # a graph even when every weight is frozen
            # the last convolution run whose maps can still localise: at least MIN_SIDE x MIN_SIDE (LeNet-5's C5
            # gives 1 x 1 on 28-px images, 2 x 2 on 32-px ones: one heat value per image quarter at best)
            maps = next((a for a in reversed(seen) if min(a.shape[-2:]) >= MIN_SIDE), seen[-1])
            target = out.argmax(1) if target is None else target.to(out.device)
            scores = out if output_kind == "logits" else out.log_softmax(1) if output_kind == "log_probs" else \
                out.clamp_min(1e-12).log()
            (grads,) = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), maps)
    finally:
        for h in hooks:
            h.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).amin(1)[:, None, None]  # min-max per image, as the paper's code does: the evidence spread
    cam = (cam - low) / (cam.flatten(1).amax(1)[:, None, None] - low).clamp_min(1e-12)  # everywhere is no place
    return cam.cpu(), out.detach()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """An RGB uint8 ``[H, W, 3]`` picture: the image (uint8 ``[C, H, W]``, grey or colour) under the heat map
    (matplotlib's ``jet``: blue cold, red hot)."""
    from matplotlib import colormaps

    rgb = np.repeat(image[:1], 3, axis=0) if image.shape[0] < 3 else image[:3]
    rgb = rgb.transpose(1, 2, 0).astype(np.float32) / 255
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * rgb + alpha * heat)).round().clip(0, 255).astype(np.uint8)


def figure_png(image: np.ndarray, cam: np.ndarray, title: str) -> bytes:
    """The input beside its Grad-CAM overlay, titled, as PNG bytes."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.1))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.84, wspace=0.06)
    for ax, picture, words in zip(fig.subplots(1, 2), (overlay(image, cam, 0.0), overlay(image, cam)),
                                  ("input", "Grad-CAM")):
        ax.imshow(picture, interpolation="nearest" if max(picture.shape[:2]) < 96 else "antialiased")
        ax.set_title(words, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title.replace("$", "\\$"), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def explain_paths(run: LoadedRun, patterns: Iterable[str], out_dir: str | Path, class_name: str | None = None
                  ) -> tuple[list[dict], list[str]]:
    """Grad-CAM of every readable image the patterns name (files, folders, globs; as ``cnnlab predict`` finds
    them), each written as ``<out_dir>/<name>.gradcam.png``; returns one row per image (file, predicted class and
    probability, the class explained, the PNG) and one line per unreadable input. Raises DataError when no input
    was readable."""
    target = None
    if class_name is not None:
        if class_name not in run.classes:
            raise ConfigError(f"explain --class (target) {class_name!r}: not a class of {run.run_dir}; its classes are "
                              f"{', '.join(run.classes)}")
        target = run.classes.index(class_name)
    files, problems = find_images(patterns)
    decoded, names = [], []
    for f in files:
        try:
            decoded.append(run.transform.read(f))
            names.append(f)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated, bombs
            problems.append(f"{f}: not a readable image ({' '.join(str(e).split())[:200]})")
    if not decoded:
        raise DataError("no readable image among the inputs:\n  " + "\n  ".join(problems or ["(none given)"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for i in range(0, len(decoded), BATCH):
        images = torch.stack(decoded[i:i + BATCH])
        x = run.transform.batch(images).to(run.device)
        wanted = None if target is None else torch.full((len(x),), target, dtype=torch.long)
        cams, out = grad_cam(run.model, x, wanted, run.output_kind)
        probs = to_probs(out.float(), run.output_kind).cpu()
        for f, image, cam, p in zip(names[i:i + BATCH], images, cams, probs):
            rows.append(_write_one(run, f, image, cam, p, target, out_dir, used))
    return rows, problems


def _write_one(run: LoadedRun, f: Path, image: torch.Tensor, cam: torch.Tensor, p: torch.Tensor, target,
               out_dir: Path, used: set) -> dict:
    pred = int(p.argmax())
    explained = pred if target is None else target
    stem, k = f.stem, 1
    while stem in used:  # two inputs with one name (a/1.png, b/1.png): 1.gradcam.png, 1-2.gradcam.png
        k += 1
        stem = f"{f.stem}-{k}"
    used.add(stem)
    title = (f"{f.name}: predicted {run.classes[pred]} ({100 * float(p[pred]):.1f} %)" +
             ("" if explained == pred else f"; explained: {run.classes[explained]} "
                                           f"({100 * float(p[explained]):.1f} %)"))
    png = out_dir / f"{stem}.gradcam.png"
    runs.write_bytes(png, figure_png(image.numpy(), cam.numpy(), title))
    return {"file": str(f), "class": run.classes[pred], "probability": round(float(p[pred]), 6),
            "explained": run.classes[explained], "png": str(png)}


def explain_mistakes(run: LoadedRun) -> bool:
    """Add ``cam_images`` to the run folder's misclassified.pt: each of the test split's most confident mistakes
    (uint8, at the run's input size, RGB) under the Grad-CAM of the class it was taken for, for the report's
    second mistakes grid. False (nothing written) when there are no mistakes, they already have theirs, or the
    network has no convolution."""
    path = run.run_dir / "misclassified.pt"
    if not path.exists():
        return False
    m = runs.load_checkpoint(path, map_location="cpu")
    if not isinstance(m, dict) or "cam_images" in m or len(m.get("images", ())) == 0:
        return False
    if not any(isinstance(module, nn.Conv2d) for module in run.model.modules()):
        return False
    images = run.transform.conform(m["images"])  # the input's channels and size: the CAM's
    cams, _ = grad_cam(run.model, run.transform.batch(images).to(run.device), m["pred"].long(), run.output_kind)
    pictures = np.stack([overlay(i.numpy(), c.numpy()) for i, c in zip(images, cams)])
    runs.save_checkpoint(path, {**m, "cam_images": torch.from_numpy(pictures).permute(0, 3, 1, 2).contiguous()})
    return True
