"""Tests for cnnlab.data.augment: each batched augmentation against torchvision's
per-image function on the same input and the same random parameters, the
random parameters themselves statistically (flip rate, crop offsets, jitter ranges),
and Preprocess, the per-batch pipeline, on real MNIST."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from data_files import cfg, real_root
from torchvision.transforms import InterpolationMode

from cnnlab.data import augment as A
from cnnlab import data
from cnnlab.config.schema import ConfigError


def batch(n=6, c=3, h=11, w=9, dtype=torch.uint8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- crop


@pytest.mark.parametrize("mode,tv_mode", [("zero", "constant"), ("reflect", "reflect")])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_equals_torchvision_crop_of_the_padded_image(mode, tv_mode, dtype):
    x, p = batch(dtype=dtype), 3
    out = A.random_crop(x, p, gen(7), mode)
    top, left = A.crop_offsets(len(x), p, gen(7))  # the same draws
    assert out.shape == x.shape and out.dtype == x.dtype
    assert len(set(top.tolist())) > 1  # the offsets differ between images
    for i in range(len(x)):
        padded = TF.pad(x[i], [p], padding_mode=tv_mode)
        ref = TF.crop(padded, int(top[i]), int(left[i]), x.shape[2], x.shape[3])
        assert torch.equal(out[i], ref), f"image {i}"


def test_crop_offsets_cover_the_range_uniformly():
    p, n = 4, 18000
    top, left = A.crop_offsets(n, p, gen(1))
    for offs in (top, left):
        counts = torch.bincount(offs, minlength=2 * p + 1).double()
        assert len(counts) == 2 * p + 1 and offs.min() == 0 and offs.max() == 2 * p
        expected = n / (2 * p + 1)
        chi2 = (((counts - expected) ** 2) / expected).sum().item()
        assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001
    assert abs(torch.corrcoef(torch.stack([top.double(), left.double()]))[0, 1].item()) < 0.03  # independent


def test_crop_without_padding_is_identity_and_reflect_limit():
    x = batch()
    assert torch.equal(A.random_crop(x, 0, gen()), x)
    with pytest.raises(ValueError, match="smaller than the image"):
        A.random_crop(x, 9, gen(), "reflect")


def test_crop_at_a_known_offset_shifts_the_image():
    x = batch(n=2, c=1, h=5, w=5)
    padded = A.pad(x, 2)
    out = A.crop_at(padded, torch.tensor([0, 4]), torch.tensor([2, 3]), 5, 5)
    assert torch.equal(out[0, :, 2:, :], x[0, :, :3, :]) and (out[0, :, :2] == 0).all()  # moved down 2
    assert torch.equal(out[1, :, :3, :4], x[1, :, 2:, 1:]) and (out[1, :, 3:] == 0).all()  # up 2, left 1


# --------------------------------------------------------------------------- flip


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_equals_torchvision_hflip(dtype):
    x = batch(n=16, dtype=dtype)
    out = A.random_hflip(x, gen(3))
    mask = A.flip_mask(len(x), gen(3))
    assert 0 < int(mask.sum()) < len(x)
    for i in range(len(x)):
        assert torch.equal(out[i], TF.hflip(x[i]) if mask[i] else x[i])


def test_flip_rate_is_one_half():
    mask = A.flip_mask(20000, gen(11))
    assert abs(mask.float().mean().item() - 0.5) < 0.015  # about 4 standard deviations
    assert A.flip_mask(1000, gen(), p=0.0).sum() == 0 and A.flip_mask(1000, gen(), p=1.0).all()


# --------------------------------------------------------------------------- colour


OPS = [
    (A.adjust_brightness, TF.adjust_brightness, (0.0, 2.0)),
    (A.adjust_contrast, TF.adjust_contrast, (0.0, 2.0)),
    (A.adjust_saturation, TF.adjust_saturation, (0.0, 2.0)),
    (A.adjust_hue, TF.adjust_hue, (-0.5, 0.5)),
]


@pytest.mark.parametrize("ours,theirs,bounds", OPS, ids=["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(ours, theirs, bounds):
    x = batch(n=8, h=13, w=7, dtype=torch.float32)
    lo, hi = bounds
    f = lo + (hi - lo) * torch.rand(8, generator=gen(5))
    out = ours(x, f)
    ref = torch.stack([theirs(x[i], float(f[i])) for i in range(len(x))])
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    # uint8 in, uint8 out; torchvision truncates where we round, so allow two grey levels
    xu = batch(n=8, h=13, w=7)
    diff = (ours(xu, f).int() - torch.stack([theirs(xu[i], float(f[i])) for i in range(8)]).int()).abs()
    assert ours(xu, f).dtype == torch.uint8 and diff.max() <= 2


def test_saturation_and_hue_leave_grey_images_alone():
    x = batch(c=1, dtype=torch.float32)
    assert torch.equal(A.adjust_saturation(x, 0.2), x) and torch.equal(A.adjust_hue(x, 0.3), x)
    assert torch.allclose(A.adjust_contrast(x, 0.5), torch.stack([TF.adjust_contrast(i, 0.5) for i in x]), atol=1e-6)


def test_jitter_factors_have_torchvision_ranges():
    f = A.jitter_factors(20000, gen(2), brightness=0.4, contrast=1.5, saturation=0.0, hue=0.1)
    b, c, h = f["brightness"], f["contrast"], f["hue"]
    assert f["saturation"] is None
    assert 0.6 <= b.min() < 0.61 and 1.39 < b.max() <= 1.4 and abs(b.mean().item() - 1.0) < 0.01
    assert 0.0 <= c.min() < 0.01 and 2.49 < c.max() <= 2.5  # max(0, 1 - 1.5) = 0
    assert -0.1 <= h.min() < -0.099 and 0.099 < h.max() <= 0.1 and abs(h.mean().item()) < 0.002
    with pytest.raises(ValueError):
        A.jitter_factors(4, gen(), hue=0.6)


def test_jitter_strengths_may_be_ranges_as_torchvision_takes_them():
    # Study B's report: ColorJitter(brightness=[3, 10], contrast=[3, 10], saturation=[3, 10], hue=0.5)
    from torchvision.transforms import ColorJitter

    tv = ColorJitter(brightness=[3, 10], contrast=(3, 10), saturation=[0, 2.5], hue=[-0.2, 0.3])
    for name, v in (("brightness", [3, 10]), ("contrast", (3, 10)), ("saturation", [0, 2.5]), ("hue", [-0.2, 0.3])):
        assert A.jitter_range(name, v) == tuple(getattr(tv, name)), name
    for v in (0.2, 1.5, 9.0):  # a number: the range torchvision makes of it
        assert A.jitter_range("brightness", v) == tuple(ColorJitter(brightness=v).brightness)
    assert A.jitter_range("hue", 0.5) == tuple(ColorJitter(hue=0.5).hue)
    assert A.jitter_range("contrast", 0) is None and ColorJitter(contrast=0).contrast is None
    assert A.jitter_range("saturation", [1, 1]) is None and ColorJitter(saturation=[1, 1]).saturation is None
    assert A.jitter_range("hue", [0, 0]) is None and ColorJitter(hue=[0, 0]).hue is None
    for name, bad in (("brightness", [10, 3]), ("contrast", [-1, 2]), ("hue", [-0.6, 0.1]), ("hue", 0.6),
                      ("saturation", [1, 2, 3])):
        with pytest.raises(ValueError, match=name):
            A.jitter_range(name, bad)
    f = A.jitter_factors(20000, gen(3), brightness=[3, 10], contrast=(3, 10), hue=[-0.2, 0.3])
    b, c, h = f["brightness"], f["contrast"], f["hue"]
    assert f["saturation"] is None
    assert 3 <= b.min() < 3.01 and 9.99 < b.max() <= 10 and abs(b.mean().item() - 6.5) < 0.05
    assert 3 <= c.min() < 3.01 and 9.99 < c.max() <= 10
    assert -0.2 <= h.min() < -0.199 and 0.299 < h.max() <= 0.3 and abs(h.mean().item() - 0.05) < 0.005
    # a number draws exactly what it drew before ranges existed
    old = A.jitter_factors(50, gen(4), 0.4, 1.5, 0.2, 0.1)
    new = A.jitter_factors(50, gen(4), [0.6, 1.4], [0.0, 2.5], [0.8, 1.2], 0.1)
    assert all(torch.allclose(old[k], new[k]) for k in A.JITTER) and torch.equal(old["hue"], new["hue"])


def test_color_jitter_applies_the_drawn_factors_in_order():
    x = batch(n=8, dtype=torch.float32)
    out = A.color_jitter(x, gen(9), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    f = A.jitter_factors(8, gen(9), 0.4, 0.4, 0.4, 0.1)
    for i in range(8):
        ref = TF.adjust_brightness(x[i], float(f["brightness"][i]))
        ref = TF.adjust_contrast(ref, float(f["contrast"][i]))
        ref = TF.adjust_saturation(ref, float(f["saturation"][i]))
        ref = TF.adjust_hue(ref, float(f["hue"][i]))
        assert torch.allclose(out[i], ref, atol=1e-5)
    assert torch.equal(A.color_jitter(x, gen(), 0, 0, 0, 0), x)
    # uint8 in: the same as on its float version, rounded back to whole grey levels
    xu = batch(n=8)
    out_f = A.color_jitter(xu.float() / 255, gen(9), 0.4, 0.4, 0.4, 0.1)
    out_u = A.color_jitter(xu, gen(9), 0.4, 0.4, 0.4, 0.1)
    assert out_u.dtype == torch.uint8 and torch.equal(out_u, (out_f * 255).round().to(torch.uint8))


# --------------------------------------------------------------------------- resize and channels


@pytest.mark.parametrize("mode,interp", [("bilinear", InterpolationMode.BILINEAR), ("bicubic", InterpolationMode.BICUBIC)])
@pytest.mark.parametrize("size", [(5, 4), (24, 20)])  # shrink (antialiased) and enlarge
def test_resize_matches_torchvision(mode, interp, size):
    x = batch(n=3, h=11, w=9, dtype=torch.float32)
    out = A.resize(x, size, mode)
    ref = TF.resize(x, list(size), interpolation=interp, antialias=True)
    assert out.shape == (3, 3, *size) and torch.allclose(out, ref, atol=1e-5)
    xu = batch(n=3, h=11, w=9)
    ref_u = TF.resize(xu, list(size), interpolation=interp, antialias=True)
    assert A.resize(xu, size, mode).dtype == torch.uint8
    assert (A.resize(xu, size, mode).int() - ref_u.int()).abs().max() <= 1
    assert A.resize(x, 7).shape[-2:] == (7, 7)  # an int is a square, not a shorter edge


def test_repeat_channels():
    x = batch(c=1)
    y = A.repeat_channels(x, 3)
    assert y.shape == (6, 3, 11, 9) and all(torch.equal(y[:, c], x[:, 0]) for c in range(3))
    assert A.repeat_channels(batch(), 3).shape[1] == 3
    with pytest.raises(ValueError):
        A.repeat_channels(batch(c=2), 3)


# --------------------------------------------------------------------------- Preprocess (on real MNIST)


@pytest.fixture(scope="module")
def mnist_small():
    c = cfg(name="mnist", root=str(real_root()), train_limit=64, val_size=100)
    return c, data.load_splits(c)


def test_preprocess_eval_normalises_exactly(mnist_small):
    c, s = mnist_small
    x = s.train_x[:16]
    out = A.Preprocess(s, c, train=False)(x)
    assert out.dtype == torch.float32 and out.shape == (16, 1, 28, 28)
    assert torch.allclose(out, (x.float() / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_preprocess_repeat_and_resize(mnist_small):
    c, _ = mnist_small
    c3 = c.model_copy(update={"channels": 3, "resize": 32})
    s = data.load_splits(c3)
    out = A.Preprocess(s, c3, train=False)(s.train_x[:4])
    assert out.shape == (4, 3, 32, 32)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_preprocess_augments_only_in_training(mnist_small):
    c, s = mnist_small
    ca = c.model_copy(update={"augment": c.augment.model_copy(update={"crop_padding": 4, "flip": True, "brightness": 0.3})})
    x = s.train_x[:32]
    train, evaluate = A.Preprocess(s, ca, train=True), A.Preprocess(s, ca, train=False)
    a = train(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, train(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, train(x, torch.Generator().manual_seed(2)))
    assert torch.equal(evaluate(x), A.Preprocess(s, c, train=False)(x))
    with pytest.raises(ValueError, match="Generator"):
        train(x)
    bad = c.model_copy(update={"augment": c.augment.model_copy(update={"crop_padding": 30, "crop_mode": "reflect"})})
    with pytest.raises(ConfigError, match="crop_padding=30"):
        A.Preprocess(s, bad, train=True)




def test_preprocess_says_whether_it_is_random(mnist_small):
    c, s = mnist_small
    aug = c.augment.model_copy
    for update, random in (({}, False), ({"crop_padding": 2}, True), ({"flip": True}, True),
                           ({"hue": 0.1}, True), ({"brightness": (3.0, 10.0)}, True), ({"saturation": (1.0, 1.0)}, False),
                           ({"crop_padding": 0, "flip": False}, False)):
        ca = c.model_copy(update={"augment": aug(update=update)})
        assert A.Preprocess(s, ca, train=True).random is random, update
        assert A.Preprocess(s, ca, train=False).random is False  # evaluation never is
    plain = A.Preprocess(s, None, train=True)  # no config: plain normalisation
    assert not plain.random and torch.equal(plain(s.train_x[:4]), A.Preprocess(s, c, train=False)(s.train_x[:4]))


def _with(c, **update):
    return c.model_copy(update={"augment": c.augment.model_copy(update=update)})


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_pre_pad_cuts_the_same_crops_as_padding_each_batch(mnist_small, mode):
    c, s = mnist_small
    plain = A.Preprocess(s, _with(c, crop_padding=3, crop_mode=mode, flip=True), train=True)
    once = A.Preprocess(s, _with(c, crop_padding=3, crop_mode=mode, flip=True, pre_pad=True), train=True)
    padded = once.prepared(s, seed=0)
    assert padded.train_x.shape[-2:] == (34, 34) and torch.equal(padded.train_y, s.train_y)
    assert s.train_x.shape[-2:] == (28, 28)  # the splits themselves are left as they were
    idx = torch.tensor([5, 0, 17, 40, 63])
    for epoch in (0, 1):
        a = plain(s.train_x[idx], torch.Generator().manual_seed(epoch), epoch)
        b = once(padded.train_x[idx], torch.Generator().manual_seed(epoch), epoch)
        assert torch.equal(a, b)
    assert plain.prepared(s, seed=0) is s  # nothing to prepare: no copy


def test_alternating_flip_flips_each_image_on_every_other_epoch(mnist_small):
    c, s = mnist_small
    alt = A.Preprocess(s, _with(c, flip=True, flip_mode="alternate"), train=True)
    x = alt.prepared(s, seed=3).train_x
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(x, s.train_x)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(x, s.train_x)])
    assert bool((flipped | kept).all()) and 16 <= int(flipped.sum()) <= 48  # a coin per image (64 images)
    assert torch.equal(alt.prepared(s, seed=3).train_x, x)  # from the seed alone: a resume rebuilds it
    assert not torch.equal(alt.prepared(s, seed=4).train_x, x)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    e0, e1, e2 = (alt(x, g, epoch) for epoch in (0, 1, 2))
    assert torch.equal(g.get_state(), state)  # no flip is drawn per batch
    assert torch.equal(e0, e2) and torch.equal(e1, e0.flip(-1))  # each image alternates
    with_crop = A.Preprocess(s, _with(c, crop_padding=2, crop_mode="reflect", flip=True, flip_mode="alternate",
                                      pre_pad=True), train=True)
    xp = with_crop.prepared(s, seed=3).train_x
    assert torch.equal(xp[:, :, 2:-2, 2:-2], x)  # flipped once, then padded
    even = with_crop(xp, torch.Generator().manual_seed(1), 0)
    odd = with_crop(xp, torch.Generator().manual_seed(1), 1)
    assert torch.equal(odd, even.flip(-1))  # same crops drawn, every window mirrored on odd epochs
    normalise = A.Preprocess(s, c, train=False)
    assert torch.equal(even, normalise(A.random_crop(x, 2, torch.Generator().manual_seed(1), "reflect")))
