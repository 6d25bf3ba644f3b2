"""Tests for the richer augmentations of cnnlab.data.augment (issue 27, item 7) and the soft-target losses they
need: the per-image affine against torchvision's affine of each image, TrivialAugment / RandAugment's ops against
torchvision's own op code, mixup / cutmix targets against the lambda and the box each image drew, the loss on
class probabilities against torch's loss on class indices, and Preprocess's seeding on real MNIST."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2._auto_augment as tv_auto
import torchvision.transforms.v2.functional as TV
from data_files import cfg, real_root

from cnnlab import data
from cnnlab.config.load import load_config
from cnnlab.config.schema import ConfigError
from cnnlab.data import augment as A
from cnnlab.training.optim import FocalLoss, build_loss, soft_target_loss


def batch(n=6, c=3, h=11, w=9, seed=0) -> torch.Tensor:
    return (torch.rand(n, c, h, w, generator=gen(seed)) * 255).round().to(torch.uint8)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- affine


def test_rotation_by_zero_is_the_identity():
    x = batch()
    assert torch.equal(A.affine(x, 0.0), x)  # uint8: exact
    assert torch.allclose(A.affine(x.float(), torch.zeros(len(x))), x.float(), atol=1e-3)
    assert torch.equal(A.random_affine(x, gen(), rotate=0.0), x)


def test_rotation_by_90_degrees_turns_a_square_image_clockwise():
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    assert torch.allclose(A.affine(x, 90.0), torch.rot90(x, -1, (-2, -1)), atol=1e-4)
    assert torch.allclose(A.affine(x, torch.tensor([90.0, -90.0]))[1], torch.rot90(x[1], 1, (-2, -1)), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_affine_is_torchvisions_affine_of_each_image(dtype):
    x = batch() if dtype == torch.uint8 else batch().float() / 255
    p = A.affine_params(len(x), gen(1), rotate=30, translate=0.1, scale=0.2, shear=10, size=(11, 9))
    out = A.random_affine(x, gen(1), rotate=30, translate=0.1, scale=0.2, shear=10)
    assert out.dtype == x.dtype and len(set(p["angle"].tolist())) == len(x)  # one angle per image
    for i in range(len(x)):
        ref = TV.affine(x[i], angle=float(p["angle"][i]), scale=float(p["scale"][i]),
                        translate=[float(p["translate_x"][i]), float(p["translate_y"][i])],
                        shear=[float(p["shear_x"][i]), 0.0], interpolation=TV.InterpolationMode.BILINEAR)
        assert torch.allclose(out[i].float(), ref.float(), atol=1e-5), f"image {i}"


def test_affine_parameters_stay_in_their_ranges():
    p = A.affine_params(4000, gen(2), rotate=15, translate=0.25, scale=0.1, shear=5, size=(20, 40))
    for key, bound in (("angle", 15), ("translate_x", 10), ("translate_y", 5), ("shear_x", 5)):
        assert p[key].abs().max() <= bound and p[key].abs().max() > 0.95 * bound, key
        assert abs(p[key].mean()) < 0.05 * bound, key
    assert 0.9 <= p["scale"].min() and p["scale"].max() <= 1.1


# --------------------------------------------------------------------------- TrivialAugment / RandAugment

TV_NAMES = {"shear_x": "ShearX", "shear_y": "ShearY", "translate_x": "TranslateX", "translate_y": "TranslateY",
            "rotate": "Rotate", "brightness": "Brightness", "color": "Color", "contrast": "Contrast",
            "sharpness": "Sharpness", "posterize": "Posterize", "solarize": "Solarize",
            "autocontrast": "AutoContrast", "equalize": "Equalize"}
MAGNITUDES = {"shear_x": [0.3, -0.5, 0.7, 0.25, -0.1, 0.9], "rotate": [30.0, -45.0, 90.0, 10.0, -135.0, 5.0],
              "translate_x": [3.7, -5.2, 8.0, 1.0, -2.9, 0.0], "posterize": [1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
              "solarize": [0.0, 50.0, 100.0, 128.0, 200.0, 255.0]}


@pytest.mark.parametrize("op", list(TV_NAMES))
def test_each_auto_op_is_torchvisions_op_of_each_image(op):
    x = batch(h=16, w=16)
    key = op.replace("_y", "_x")
    m = torch.tensor(MAGNITUDES.get(key, [0.3, -0.5, 0.9, 0.1, -0.9, 0.6]))
    out = A.auto_op(x, op, m)
    space = tv_auto.TrivialAugmentWide()
    for i in range(len(x)):
        mag = float(m[i]) / 255 if op == "solarize" else float(m[i])  # torchvision: a share of the largest value
        ref = space._apply_image_or_video_transform(x[i], TV_NAMES[op], mag, TV.InterpolationMode.NEAREST,
                                                    {torch.Tensor: None, "others": None})
        diff = (out[i].int() - ref.int()).abs()
        if op in ("brightness", "color", "contrast", "sharpness"):  # torchvision truncates its uint8 grey and
            assert diff.max() <= 2 and diff.float().mean() <= 1, f"image {i}"  # blends; ours round them
        elif op.startswith("shear"):  # nearest: a source point exactly between two pixels may go either way
            assert (diff > 0).float().mean() < 0.05, f"image {i}"
        else:
            assert diff.max() == 0, f"image {i}"


def test_auto_magnitudes_are_torchvisions_bins():
    bins = torch.arange(31)
    for policy, space in (("trivial", tv_auto.TrivialAugmentWide._AUGMENTATION_SPACE),
                          ("randaugment", tv_auto.RandAugment._AUGMENTATION_SPACE)):
        for op, name in TV_NAMES.items():
            ref = space[name][0](31, 24, 32)
            ours = A.auto_magnitudes(policy, op, bins, 24, 32)
            if ref is None:
                continue
            ref = ref.float() * (255 if op == "solarize" else 1)
            assert torch.allclose(ours, ref, atol=1e-4), (policy, op)
            assert (op in A.SIGNED_OPS) == space[name][1], (policy, op)


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_auto_augment_is_seeded_and_per_image(policy):
    x = batch(n=64, h=16, w=16)
    a = A.auto_augment(x, gen(3), policy, 2, 9)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, A.auto_augment(x, gen(3), policy, 2, 9))
    assert not torch.equal(a, A.auto_augment(x, gen(4), policy, 2, 9))
    changed = (a != x).flatten(1).any(1)
    assert 0 < changed.sum() < len(x) or policy == "randaugment"  # trivial: some draw identity, most do not
    # the same image in every position comes out in many different ways: each image draws its own op
    same = x[:1].expand(64, -1, -1, -1).contiguous()
    distinct = {bytes(img.numpy().tobytes()) for img in A.auto_augment(same, gen(5), policy, 2, 9)}
    assert len(distinct) > 10


# --------------------------------------------------------------------------- mixup and cutmix


def test_mixup_targets_sum_to_one_and_carry_each_images_lambda():
    x, y = torch.rand(8, 3, 6, 5, generator=gen()), torch.arange(8) % 5
    lam = torch.linspace(0.05, 0.95, 8)
    mixed, targets, share = A.mix(x, y, 5, lam)
    no_cut = A.mix(x, y, 5, lam, torch.zeros(8, dtype=torch.bool), torch.zeros(8, 4, dtype=torch.long))
    assert torch.equal(no_cut[0], mixed) and torch.equal(no_cut[1], targets)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert torch.allclose(share, lam)
    partner = y.roll(1)
    for i in range(8):
        assert torch.allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[i - 1], atol=1e-6)
        assert torch.isclose(targets[i, y[i]], lam[i]) and torch.isclose(targets[i, partner[i]], 1 - lam[i])


def test_cutmix_targets_match_the_pasted_box_area():
    n, h, w = 16, 12, 10
    x = torch.arange(1.0, n + 1).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()  # image i is all i + 1
    y = torch.arange(n) % 7
    u = torch.rand(3, n, generator=gen(6))
    lam = u[0]
    boxes = A.cutmix_boxes(lam, u[1], u[2], h, w)
    mixed, targets, share = A.mix(x, y, 7, lam, torch.ones(n, dtype=torch.bool), boxes)
    assert torch.allclose(targets.sum(1), torch.ones(n))
    for i in range(n):
        pasted = (mixed[i, 0] == x[i - 1, 0, 0, 0]).float().mean()  # pixels from the neighbour
        assert torch.isclose(share[i], 1 - pasted), i
        top, bottom, left, right = boxes[i].tolist()
        assert torch.equal(mixed[i, :, top:bottom, left:right], x[i - 1, :, top:bottom, left:right])
        if y[i] != y[i - 1]:
            assert torch.isclose(targets[i, y[i]], share[i]) and torch.isclose(targets[i, y[i - 1]], 1 - share[i])
    assert (share < 1).sum() > n // 2  # most boxes are not empty


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixer_is_seeded_and_its_targets_sum_to_one(mixup, cutmix):
    mixer = A.Mixer(mixup, cutmix, 10)
    x, y = torch.rand(256, 3, 8, 8, generator=gen()), torch.randint(0, 10, (256,), generator=gen(1))
    a, ta = mixer(x, y, gen(7))
    b, tb = mixer(x, y, gen(7))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert torch.allclose(ta.sum(1), torch.ones(256))
    own = ta.gather(1, y[:, None]).squeeze(1)
    assert own.min() < 0.5 < own.max()  # lambdas spread over (0, 1)


def test_beta_quantiles_give_beta_draws():
    lam = A._quantile(A.beta_quantiles(0.4), torch.rand(200_000, generator=gen()))
    mean, var = 0.5, 1 / (4 * (2 * 0.4 + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(float(lam.mean()) - mean) < 0.005 and abs(float(lam.var()) - var) < 0.005
    assert 0 <= lam.min() and lam.max() <= 1


# --------------------------------------------------------------------------- soft-target losses


def _loss(name="cross_entropy", classes=5, weight=None, **loss):
    cfg_loss = load_config(None).loss.model_copy(update={"name": name, **loss})
    return build_loss(cfg_loss, classes, weight)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_probabilities_give_torchs_loss_of_class_indices(smoothing, weighted):
    out, y = torch.randn(12, 5, generator=gen()), torch.arange(12) % 5
    w = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.2]) if weighted else None
    ce = _loss(weight=w, label_smoothing=smoothing)
    soft = F.one_hot(y, 5).float()
    assert torch.allclose(ce(out, soft), ce(out, y), atol=1e-6)
    ref = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)(out, y)
    assert torch.allclose(ce(out, soft), ref, atol=1e-6)
    nll = _loss("nll", weight=w)
    logp = F.log_softmax(out, 1)
    assert torch.allclose(nll(logp, soft), F.nll_loss(logp, y, weight=w), atol=1e-6)
    focal = _loss("focal", weight=w, gamma=2.0)
    assert torch.allclose(focal(out, soft), FocalLoss(2.0, w)(out, y), atol=1e-6)


def test_soft_targets_give_torchs_loss_of_class_probabilities_smoothed():
    out = torch.randn(12, 5, generator=gen())
    t = torch.softmax(torch.randn(12, 5, generator=gen(1)), 1)
    for smoothing in (0.0, 0.2):
        ref = F.cross_entropy(out, t, label_smoothing=smoothing)
        assert torch.allclose(_loss(label_smoothing=smoothing)(out, t), ref, atol=1e-6)


def test_a_mixed_target_loss_is_the_mix_of_the_two_losses():
    out, y1, y2 = torch.randn(10, 4, generator=gen()), torch.arange(10) % 4, (torch.arange(10) + 1) % 4
    lam, ce = 0.3, _loss(classes=4, label_smoothing=0.1)
    mixed = lam * F.one_hot(y1, 4).float() + (1 - lam) * F.one_hot(y2, 4).float()
    assert torch.allclose(ce(out, mixed), lam * ce(out, y1) + (1 - lam) * ce(out, y2), atol=1e-6)
    mse = _loss("mse", classes=4)
    assert torch.allclose(mse(out, mixed), F.mse_loss(out, mixed))


def test_mixing_with_a_loss_that_takes_no_probabilities_is_refused():
    with pytest.raises(ConfigError, match="data.augment.mixup"):
        load_config(None, {"data.augment.mixup": 0.2, "loss.name": "multi_margin"})


# --------------------------------------------------------------------------- Preprocess on real MNIST


@pytest.fixture(scope="module")
def mnist_small():
    c = cfg(name="mnist", root=str(real_root()), train_limit=64, val_size=100)
    return c, data.load_splits(c)


ALL_ON = {"crop_padding": 2, "flip": True, "rotate": 15.0, "translate": 0.1, "scale": 0.1, "shear": 5.0,
          "auto": "trivial", "brightness": 0.2, "mixup": 0.2, "cutmix": 1.0}


def test_preprocess_with_every_augmentation_is_seeded_and_resumable(mnist_small):
    c, s = mnist_small
    ca = c.model_copy(update={"augment": c.augment.model_copy(update=ALL_ON)})
    pre = A.Preprocess(s, ca, train=True)
    assert pre.random and pre.affine and pre.auto and pre.mixer is not None
    x, y = s.train_x[:32], s.train_y[:32]

    def two_batches(g):
        out = []
        for _ in range(2):
            out.append(pre.mixer(pre(x, g), y, g))
        return out

    a = two_batches(gen(11))
    b = two_batches(gen(11))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], a[1][0])  # the second batch draws anew
    g = gen(11)
    pre.mixer(pre(x, g), y, g)
    state = g.get_state()  # what a checkpoint keeps (Checkpoint.rng["augment"])
    resumed = gen(999)
    resumed.set_state(state)
    second = pre.mixer(pre(x, resumed), y, resumed)
    assert torch.equal(second[0], a[1][0]) and torch.equal(second[1], a[1][1])
    plain = A.Preprocess(s, ca, train=False)
    assert not plain.random and plain.mixer is None


@pytest.mark.parametrize("update", [{"rotate": 10.0}, {"auto": "randaugment"}, {"mixup": 0.2}, {"cutmix": 1.0},
                                    {"shear": 3.0}])
def test_preprocess_says_each_new_augmentation_is_random(mnist_small, update):
    c, s = mnist_small
    ca = c.model_copy(update={"augment": c.augment.model_copy(update=update)})
    assert A.Preprocess(s, ca, train=True).random and not A.Preprocess(s, ca, train=False).random
