"""Where a run's numbers go besides its own folder: trackers.

A tracker is any object with three methods, called by the training loop (:mod:`cnnlab.train`):

- ``on_eval(row) -> str | None``: one learning-curve point (the ``metrics.jsonl`` row), after the
  checkpoints of that point are written. Returning a status (``"pruned"``) stops the run there, as a
  Ray Tune scheduler does with a hopeless trial;
- ``on_finish(summary)``: the run's ``summary.json``, once written;
- ``close()``: always called, also after a failure.

:func:`trackers_for` builds the ones a config asks for (``train.tensorboard``); callers add their own
(``train.run(..., trackers=[...])``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

from cnnlab.config import Config


class Tracker(Protocol):
    def on_eval(self, row: dict) -> str | None: ...

    def on_finish(self, summary: dict) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``): train/loss, val/accuracy, lr, ...
    at each evaluation point's step, flushed at once so TensorBoard shows live curves."""

    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (checked at load)

        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def on_eval(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key.replace("train_", "train/", 1).replace("val_", "val/", 1), value,
                                       row["step"])
        self.writer.flush()

    def on_finish(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        self.writer.close()


def trackers_for(cfg: Config, out_dir: Path) -> list:
    """The trackers ``cfg`` asks for."""
    return [TensorBoard(out_dir)] if cfg.train.tensorboard else []
