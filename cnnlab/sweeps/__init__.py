"""Sweeps: the sweep file, its runs as plain tasks, the local worker pool and the Ray Tune executor."""
