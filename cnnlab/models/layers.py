"""What a network is: its layer table, parameter counts and forward FLOPs per image.

:func:`summarize` runs one image through the model twice, in eval mode and without
gradients: once under torchinfo, which records every leaf layer's output shape and
parameter count (Study C's layer-by-layer table), and once under PyTorch's
``FlopCounterMode``, which counts the floating-point operations of matrix multiplications
and convolutions (a multiply-add is 2 FLOPs; element-wise work such as activations is not
counted). Lazy layers get their sizes from the first of these passes, so the parameter
totals are exact for the given input shape. The model's per-layer train/eval modes are
restored afterwards, so frozen batch norm stays frozen. :func:`format_table` prints the result.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def summarize(model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "cpu") -> dict[str, Any]:
    """``{params_total, params_trainable, flops_per_image, layers: [{name, type, output_shape, params}]}``
    for one image of ``input_shape`` (C, H, W)."""
    import torchinfo

    device = torch.device(device)
    x = torch.zeros(1, *input_shape, device=device)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)  # sizes any lazy layer before anything counts parameters
            stats = torchinfo.summary(model, input_data=[x], device=device, verbose=0, mode="eval")
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
        _forget_torchinfo_cache(model)
    return {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_image": int(counter.get_total_flops()),
        "layers": _leaf_rows(stats.summary_list),
    }


def _forget_torchinfo_cache(model: nn.Module) -> None:
    # torchinfo keeps the last summary of each model class in a module-level dict, which would
    # keep this model (and its memory) alive for the whole process, e.g. during a sweep.
    try:
        from torchinfo import torchinfo as ti

        ti._cached_forward_pass.pop(model.__class__.__name__, None)
    except (ImportError, AttributeError):
        pass


def _leaf_rows(summary_list) -> list[dict[str, Any]]:
    rows = []
    for info in summary_list:
        if info.depth == 0 or not info.is_leaf_layer or not info.executed:
            continue
        names = []
        node = info
        while node is not None and node.depth > 0:
            names.append(node.var_name)
            node = node.parent_info
        shape = info.output_size
        rows.append({
            "name": ".".join(reversed(names)),
            "type": info.class_name,
            "output_shape": list(shape[1:]) if shape else [],  # without the batch dimension
            # a layer called twice (e.g. a shared ReLU) owns its parameters only once
            "params": 0 if info.is_recursive else int(info.num_params),
        })
    return rows


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape) if shape else "-"


def format_table(summary: dict[str, Any]) -> str:
    """The layer table (layer | type | output shape | params) with the totals and FLOPs below it."""
    header = ("layer", "type", "output shape", "params")
    rows = [(r["name"], r["type"], _shape(r["output_shape"]), f"{r['params']:,}") for r in summary["layers"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    out = [line(header), rule, *(line(r) for r in rows), rule]
    total, trainable = summary["params_total"], summary["params_trainable"]
    out.append(f"parameters: {total:,} total, {trainable:,} trainable, {total - trainable:,} frozen")
    out.append(f"forward FLOPs per image: {summary['flops_per_image']:,} ({summary['flops_per_image'] / 1e6:,.2f} M)")
    return "\n".join(out)
