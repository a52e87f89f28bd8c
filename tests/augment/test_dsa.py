"""Tests of the DSA augmentation and the identity augmentation (CPU, fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from mim4dd_kit.api import Augmentation, DataInfo
from mim4dd_kit.augmentations import dsa as D
from mim4dd_kit.augmentations.dsa import DSA
from mim4dd_kit.augmentations.identity import NoAugment


def info(num_classes: int = 10, flip_ok: bool = True, size: int = 8) -> DataInfo:
    return DataInfo(
        name="toy",
        num_classes=num_classes,
        channels=3,
        image_size=(size, size),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        class_names=tuple(str(i) for i in range(num_classes)),
        flip_ok=flip_ok,
    )


def make(strategy: str = "auto", num_classes: int = 10, **kw: float) -> DSA:
    return DSA(DSA.Params(strategy=strategy, **kw), data_info=info(num_classes))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=gen(seed))


# ------------------------------------------------------------------ ops in isolation


def test_flip_is_an_exact_width_flip_where_masked():
    x = images(3)
    out = D.flip(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2, :, :, 0], x[2, :, :, -1])


def test_translate_is_an_exact_integer_shift_with_zero_fill():
    x = images(2, c=2, h=4, w=5)
    shifts = torch.tensor([[1, -2], [-3, 4]])
    out = D.translate(x, shifts)
    expect = torch.zeros_like(x)
    for n in range(2):
        dy, dx = shifts[n].tolist()
        for i in range(4):
            for j in range(5):
                if 0 <= i + dy < 4 and 0 <= j + dx < 5:
                    expect[n, :, i, j] = x[n, :, i + dy, j + dx]
    assert torch.equal(out, expect)
    # a zero shift is the identity, a shift past the border leaves nothing
    assert torch.equal(D.translate(x, torch.zeros(2, 2, dtype=torch.long)), x)
    assert torch.count_nonzero(D.translate(x, torch.tensor([[4, 0], [0, -5]]))) == 0


def test_cutout_zeroes_a_square_of_the_configured_size():
    aug = make("cutout")
    assert aug.cutout_size((8, 8)) == (4, 4)  # int(8 * 0.5 + 0.5)
    x = images(2) + 10.0  # no zeros before the cutout
    out = D.cutout(x, torch.tensor([[4, 3], [0, 8]]), (4, 4))
    # sample 0: centre (4, 3) -> rows 2..5, columns 1..4, every channel
    expect = x[0].clone()
    expect[:, 2:6, 1:5] = 0
    assert torch.equal(out[0], expect)
    # sample 1: the square is clipped by the corner: rows 0..1, columns 6..7
    zero = (out[1] == 0).all(0)
    assert zero[:2, 6:].all() and zero.sum() == 4


def test_cutout_through_dsa_zeroes_at_most_one_square():
    x = images(64, h=8, w=8) + 10.0
    out = make("cutout")(x, generator=gen(3))
    zero = (out == 0).all(1)  # (N, H, W): same pixels in every channel
    assert torch.equal((out == 0).any(1), zero)
    rows, cols = zero.any(2), zero.any(1)
    # the zeroed set is the product of a run of rows and a run of columns, each <= 4
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])
    assert int(rows.sum(1).max()) == 4 and int(cols.sum(1).max()) == 4
    assert int(rows.sum(1).min()) >= 2  # centre in [0, 8]: at least half the square stays


def test_color_formulas_are_exact():
    x = images(3)
    u = torch.tensor([0.0, 0.25, 0.9])
    ub = u[:, None, None, None]
    assert torch.equal(D.brightness(x, u, 1.0), x + (ub - 0.5) * 1.0)
    m = x.mean(dim=1, keepdim=True)
    assert torch.equal(D.saturation(x, u, 2.0), (x - m) * (ub * 2.0) + m)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(D.contrast(x, u, 0.5), (x - m) * (ub + 0.5) + m)


def test_color_family_applies_brightness_saturation_contrast_in_order():
    aug = make("color")
    x = images(5)
    p = aug.draw(5, (8, 8), gen(1))
    expect = D.contrast(
        D.saturation(D.brightness(x, p.brightness, 1.0), p.saturation, 2.0), p.contrast, 0.5
    )
    assert torch.allclose(aug.apply(x, p), expect, atol=0, rtol=0)


def test_unit_scale_and_zero_rotation_are_identity():
    x = images(3, h=7, w=9)
    assert torch.allclose(D.affine(x, D.scale_theta(torch.ones(3, 2))), x, atol=1e-5)
    assert torch.allclose(D.affine(x, D.rotate_theta(torch.zeros(3))), x, atol=1e-5)


def test_rotation_by_90_degrees_is_anticlockwise_rot90():
    # align_corners=True maps the pixel grid of a square image onto itself at 90 degrees
    x = images(2, h=6, w=6)
    out = D.affine(x, D.rotate_theta(torch.full((2,), math.pi / 2)))
    assert torch.allclose(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)


def test_scale_theta_and_rotate_theta_matrices():
    s = torch.tensor([[1.1, 0.9]])
    assert torch.equal(D.scale_theta(s), torch.tensor([[[1.1, 0.0, 0.0], [0.0, 0.9, 0.0]]]))
    a = torch.tensor([0.3])
    c, si = math.cos(0.3), math.sin(0.3)
    expect = torch.tensor([[[c, -si, 0.0], [si, c, 0.0]]])
    assert torch.allclose(D.rotate_theta(a), expect, atol=1e-7)


# ------------------------------------------------------------------ parameter draws


def test_draw_ranges_follow_the_constants():
    aug = make(num_classes=10)
    p = aug.draw(4000, (32, 32), gen(0))
    assert p.shift.min() == -4 and p.shift.max() == 4  # int(32 * 0.125 + 0.5)
    assert p.center.min() == 0 and p.center.max() == 32  # randint(0, 32 + 1 - 16 % 2)
    assert p.scale.min() >= 1 / 1.2 and p.scale.max() <= 1.2
    assert p.angle.abs().max() <= math.radians(15)
    assert 0.45 < p.flip.double().mean() < 0.55
    for u in (p.brightness, p.saturation, p.contrast):
        assert u.min() >= 0 and u.max() < 1


def test_family_frequencies_are_roughly_uniform():
    aug = make()
    n = 12000
    counts = torch.bincount(aug.draw(n, (32, 32), gen(7)).family, minlength=6)
    expected = n / 6  # std of a count is about 41
    assert ((counts - expected).abs() < 200).all(), counts


def test_call_uses_one_family_per_call_and_per_sample_parameters():
    aug = make("cutout_flip", prob_flip=1.0)
    x = images(1).expand(16, -1, -1, -1).contiguous() + 10.0  # 16 copies, no zeros
    seen = set()
    for seed in range(12):
        out = aug(x, generator=gen(seed))
        flipped = (out == x.flip(3)).flatten(1).all(1)
        assert flipped.all() or not flipped.any()  # one family for the whole call
        if flipped.all():
            seen.add("flip")
        else:
            seen.add("cutout")
            # per-sample parameters: the 16 copies do not all get the same square
            assert len({tuple(o.flatten().tolist()) for o in out}) > 1
    assert seen == {"cutout", "flip"}


# ------------------------------------------------------------------ siamese


def test_siamese_same_group_same_output_different_groups_differ():
    aug = make(num_classes=10)
    base = images(1, h=16, w=16)
    # every real and syn sample is the same image; groups 0..9 on both sides
    real_g = torch.arange(10).repeat(3)
    syn_g = torch.arange(10)
    real = base.expand(30, -1, -1, -1)
    syn = base.expand(10, -1, -1, -1).clone().requires_grad_(True)
    r, s = aug.siamese(real, real_g, syn, syn_g, generator=gen(0))
    for i in range(30):
        assert torch.allclose(r[i], s[real_g[i]], atol=1e-6, rtol=0)
    distinct = {tuple(v.flatten().round(decimals=4).tolist()) for v in s.detach()}
    assert len(distinct) >= 8  # ten groups: equal draws are rare (flip-or-not can repeat)


def test_siamese_gathers_the_group_rows_of_one_draw():
    aug = make(num_classes=5)
    real, syn = images(7, seed=1), images(5, seed=2)
    rg, sg = torch.tensor([4, 0, 0, 3, 1, 2, 4]), torch.tensor([0, 1, 2, 3, 4])
    r, s = aug.siamese(real, rg, syn, sg, generator=gen(9))
    p = aug.draw(5, (8, 8), gen(9))
    for i in range(7):
        one = p.take(rg[i : i + 1])
        expect = aug.apply_family(aug.families[int(one.family)], real[i : i + 1], one)
        assert torch.allclose(r[i : i + 1], expect, atol=1e-6, rtol=0)
    assert torch.allclose(s, aug.apply(syn, p.take(sg)), atol=1e-6, rtol=0)


def test_siamese_is_reproducible_with_a_generator():
    aug = make()
    real, syn = images(20, seed=1), images(10, seed=2)
    rg, sg = torch.arange(10).repeat(2), torch.arange(10)
    a = aug.siamese(real, rg, syn, sg, generator=gen(5))
    b = aug.siamese(real, rg, syn, sg, generator=gen(5))
    c = aug.siamese(real, rg, syn, sg, generator=gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_siamese_rejects_group_ids_out_of_range_and_bad_shapes():
    aug = make(num_classes=3)
    x = images(2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        aug.siamese(x, torch.tensor([0, 3]), x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="groups"):
        aug.siamese(x, torch.tensor([0]), x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ in size"):
        aug.siamese(x, torch.tensor([0, 1]), images(2, h=6, w=6), torch.tensor([0, 1]))


# ------------------------------------------------------------------ gradients, dtypes


@pytest.mark.parametrize("family", D.KNOWN_FAMILIES)
def test_gradients_flow_to_the_inputs(family):
    aug = make(family, prob_flip=1.0)
    x = images(4).requires_grad_(True)
    aug(x, generator=gen(0)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    syn = images(4, seed=3).requires_grad_(True)
    _, s = aug.siamese(images(6), torch.arange(6) % 4, syn, torch.arange(4), generator=gen(1))
    s.square().sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_are_preserved(dtype):
    aug = make()
    x = images(6, h=8, w=10).to(dtype)
    for seed in range(6):
        out = aug(x, generator=gen(seed))
        assert out.shape == x.shape and out.dtype == dtype
    r, s = aug.siamese(x, torch.arange(6), x[:3], torch.arange(3), generator=gen(0))
    assert r.shape == x.shape and s.shape == (3, 3, 8, 10) and r.dtype == s.dtype == dtype


def test_empty_batches_pass_through():
    aug = make()
    empty = images(0)
    r, s = aug.siamese(empty, torch.zeros(0, dtype=torch.long), images(2), torch.tensor([0, 1]))
    assert r.shape == empty.shape and s.shape == (2, 3, 8, 8)
    assert aug(empty).shape == empty.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_the_same_cpu_generator():
    aug = make()
    real, syn = images(20, seed=1), images(10, seed=2)
    rg, sg = torch.arange(10).repeat(2), torch.arange(10)
    cpu = aug.siamese(real, rg, syn, sg, generator=gen(4))
    gpu = aug.siamese(real.cuda(), rg.cuda(), syn.cuda(), sg.cuda(), generator=gen(4))
    for a, b in zip(cpu, gpu, strict=True):
        assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-5)


# ------------------------------------------------------------------ strategy, params


def test_auto_strategy_resolves_per_flip_ok():
    a = DSA(DSA.Params(), data_info=info(flip_ok=True))
    b = DSA(DSA.Params(), data_info=info(flip_ok=False))
    assert a.strategy == "color_crop_cutout_flip_scale_rotate"
    assert b.strategy == "color_crop_cutout_scale_rotate" and "flip" not in b.families
    # an explicit strategy is kept even for digits
    c = DSA(DSA.Params(strategy="flip_crop"), data_info=info(flip_ok=False))
    assert c.families == ("flip", "crop")


def test_unknown_family_is_rejected_with_the_known_ones():
    with pytest.raises(ValidationError) as err:
        DSA.Params(strategy="color_blur")
    msg = str(err.value)
    assert "'blur'" in msg and all(f in msg for f in D.KNOWN_FAMILIES)
    with pytest.raises(ValidationError):
        DSA.Params(strategy="")


@pytest.mark.parametrize(
    "bad", [{"ratio_scale": 1.0}, {"prob_flip": 1.5}, {"ratio_cutout": 0.0}, {"foo": 1}]
)
def test_invalid_constants_are_rejected(bad):
    with pytest.raises(ValidationError):
        DSA.Params(**bad)


def test_defaults_are_the_reference_constants():
    p = DSA.Params()
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)
    assert (p.ratio_crop_pad, p.ratio_cutout, p.prob_flip) == (0.125, 0.5, 0.5)
    assert (p.ratio_scale, p.ratio_rotate) == (1.2, 15.0)


def test_registry_builds_both_augmentations():
    from mim4dd_kit.config.registry import ParamsError, Registry

    reg = Registry()
    aug = reg.build("augmentations", {"name": "dsa"}, data_info=info(flip_ok=False))
    assert isinstance(aug, DSA) and isinstance(aug, Augmentation)
    assert aug.strategy == "color_crop_cutout_scale_rotate"
    with pytest.raises(ParamsError, match="blur"):
        reg.build("augmentations", {"name": "dsa", "strategy": "blur"}, data_info=info())
    none = reg.build("augmentations", {"name": "none"}, data_info=info())
    assert isinstance(none, NoAugment) and isinstance(none, Augmentation)


def test_no_augment_returns_its_inputs():
    aug = NoAugment(NoAugment.Params(), data_info=info())
    x, y = images(2), images(3)
    r, s = aug.siamese(x, torch.tensor([0, 1]), y, torch.tensor([0, 1, 2]))
    assert r is x and s is y and aug(x) is x
    with pytest.raises(ValidationError):
        NoAugment.Params(strategy="color")
