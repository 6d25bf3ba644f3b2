"""One training run: the loop, its typed state and checkpoint, the step, optimizers, runtime, scoring, trackers."""
