"""Tests for cnnlab.data.batches: the per-epoch permutation rule, resuming mid-epoch
from a batch index, and evaluation slices that cover a split once, in order."""
from __future__ import annotations

import pytest
import torch

from cnnlab.data.batches import epoch_permutation, eval_batches, train_batches


def toy(n=103):
    """n two-pixel images whose pixels say which image they are, and labels 0..n-1."""
    return torch.arange(n * 2).view(n, 1, 1, 2), torch.arange(n)


def test_permutation_is_exactly_the_seed_epoch_rule():
    for seed, epoch in ((0, 0), (0, 1), (7, 3)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        assert torch.equal(epoch_permutation(1000, seed, epoch), torch.randperm(1000, generator=g))
    assert not torch.equal(epoch_permutation(1000, 0, 0), epoch_permutation(1000, 0, 1))  # a new order each epoch
    assert not torch.equal(epoch_permutation(1000, 0, 0), epoch_permutation(1000, 1, 0))  # and each seed
    # nothing drawn before changes it (its own generator, not the global one)
    torch.manual_seed(123)
    a = epoch_permutation(50, 2, 5)
    torch.rand(10)
    assert torch.equal(a, epoch_permutation(50, 2, 5))
    assert epoch_permutation(5, 0, 0, device="cpu").device.type == "cpu"


def test_train_batches_are_slices_of_the_permutation():
    x, y = toy(103)
    got = list(train_batches(x, y, 10, seed=3, epoch=2))
    perm = epoch_permutation(103, 3, 2)
    assert [len(b) for _, b in got] == [10] * 10 + [3]  # the last short batch is kept
    assert torch.equal(torch.cat([b for _, b in got]), perm)  # y = arange, so y batches are the indices
    for i, (xb, yb) in enumerate(got):
        assert torch.equal(xb, x[perm[i * 10:(i + 1) * 10]]) and torch.equal(yb, y[perm[i * 10:(i + 1) * 10]])


def test_start_resumes_mid_epoch_with_the_same_batches():
    x, y = toy(103)
    whole = list(train_batches(x, y, 10, seed=1, epoch=4))
    rest = list(train_batches(x, y, 10, seed=1, epoch=4, start=7))
    assert len(rest) == len(whole) - 7
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(whole[7:], rest))
    assert list(train_batches(x, y, 10, seed=1, epoch=4, start=11)) == []


def test_eval_batches_cover_every_image_once_in_order():
    x, y = toy(103)
    got = list(eval_batches(x, y, 25))
    assert [len(b) for _, b in got] == [25, 25, 25, 25, 3]
    assert torch.equal(torch.cat([b for _, b in got]), y) and torch.equal(torch.cat([a for a, _ in got]), x)
    assert list(eval_batches(x[:0], y[:0], 4)) == []
    assert list(train_batches(x[:0], y[:0], 4, seed=0, epoch=0)) == []


def test_batch_size_must_be_positive():
    x, y = toy(5)
    with pytest.raises(ValueError, match="batch_size"):
        next(train_batches(x, y, 0, seed=0, epoch=0))
    with pytest.raises(ValueError, match="batch_size"):
        next(eval_batches(x, y, 0))


def test_drop_last_leaves_out_the_short_batch_only():
    x, y = torch.arange(53).view(53, 1, 1, 1), torch.arange(53)
    got = list(train_batches(x, y, 10, seed=0, epoch=0, drop_last=True))
    whole = list(train_batches(x, y, 10, seed=0, epoch=0))
    assert [len(b) for _, b in got] == [10] * 5 and len(whole) == 6
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, whole))
    assert [len(b) for _, b in train_batches(x, y, 10, seed=0, epoch=0, start=3, drop_last=True)] == [10, 10]
