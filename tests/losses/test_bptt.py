"""BPTT: meta-gradients through the functional unroll, truncation, engine integration."""


import pytest
import torch
import torch.nn.functional as F
from helpers import (
    MIM,
    assert_lambda_zero_is_exact,
    assert_loss_decreases,
    merged,
    set_up_run,
)
from pydantic import ValidationError

from mim4dd_kit.backbones.mlp import MLP
from mim4dd_kit.dd_losses.bptt import BPTT
from mim4dd_kit.run.engine import Run
from mim4dd_kit.training.unroll import FeaturesAndLogits, unroll

# changes to the shared tiny recipe (tests/conftest.py) that make it a BPTT recipe
BPTT_CHANGES = {
    "name": "tiny_bptt",
    "synthetic": {"iterations": 3},
    "dd_loss": {"name": "bptt", "inner_steps": 4},
    "output": {"checkpoint_every": 0},
}


@pytest.fixture
def recipe(tiny_recipe):
    """``recipe(**changes)``: the tiny BPTT recipe with top-level changes merged in."""

    def make(**changes):
        return tiny_recipe(**merged(BPTT_CHANGES, changes))

    return make


@pytest.fixture
def make_run(recipe):
    def make(tmp_path, **changes) -> Run:
        return set_up_run(recipe(**changes), tmp_path)

    return make


def test_reference_defaults():
    # RememberThePast: README command (150 steps), configs (lr 0.01, momentum 0.9), no
    # augmentation ('none' interventions); the lr is not learned
    p = BPTT.Params()
    assert (p.inner_steps, p.inner_lr, p.momentum, p.augment) == (150, 0.01, 0.9, False)
    assert BPTT.learns_lr is False


def test_inner_lr_is_fixed_and_gradients_reach_images(make_run, tmp_path):
    r = make_run(tmp_path)
    assert r.syn.lr is None and r.opt_lr is None  # nothing learned but the images
    out = r.loss.compute(r.syn, 0, want_features=False)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
    # the fixed lr is inner_lr: a call with a learned lr of the same value agrees
    learned = make_run(tmp_path / "l", synthetic={"learn_lr": True})
    torch.manual_seed(4)
    a = r.loss.compute(r.syn, 0, False).loss
    torch.manual_seed(4)
    b = learned.loss.compute(learned.syn, 0, False).loss
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_learned_lr_starts_at_inner_lr(make_run, tmp_path):
    r = make_run(tmp_path, synthetic={"learn_lr": True},
                 dd_loss={"name": "bptt", "inner_steps": 4, "inner_lr": 0.02})
    assert r.syn.lr is not None and r.syn.lr.item() == pytest.approx(0.02)
    r.loss.compute(r.syn, 0, want_features=False).loss.backward()
    assert r.syn.lr.grad is not None and r.syn.lr.grad.abs() > 0
    given = make_run(tmp_path / "g", synthetic={"learn_lr": True, "lr_init": 0.03})
    assert given.syn.lr.item() == pytest.approx(0.03)  # synthetic.lr_init wins


def test_augmentation_only_when_asked(make_run, tmp_path):
    calls: list[int] = []

    def counting(run):
        real = run.ctx.augment

        class Counting:
            def __call__(self, x, generator=None):
                calls.append(len(x))
                return real(x)

        run.ctx.augment = Counting()
        run.loss.ctx = run.ctx
        return run

    r = counting(make_run(tmp_path))  # the tiny recipe has DSA (for evaluation)
    r.loss.compute(r.syn, 0, False)
    assert calls == []  # reference default: no augmentation in the inner loop or meta-loss
    r = counting(make_run(tmp_path / "a", dd_loss={"name": "bptt", "inner_steps": 4,
                                                   "augment": True}))
    r.loss.compute(r.syn, 0, False)
    assert calls == [len(r.syn.labels)] * 4 + [10 * 24]  # 4 inner steps, then the real batch


def test_meta_loss_decreases_over_engine_steps(make_run, tmp_path):
    # a larger fixed inner lr than the reference's 0.01: 4 steps of a width-8 net move
    r = make_run(tmp_path, augmentation=None,
                 dd_loss={"name": "bptt", "inner_steps": 4, "inner_lr": 0.1})
    # probe: same network init and real batch every time
    assert_loss_decreases(r, steps=5, probe_seed=123)


def test_features_for_the_regularizer(make_run, tmp_path):
    r = make_run(tmp_path, regularizer=MIM)
    out = r.loss.compute(r.syn, 0, want_features=True)
    m, n = len(r.syn.labels), 10 * 24
    assert len(out.syn_feats) == len(out.real_feats) == 2
    for f_s, f_r in zip(out.syn_feats, out.real_feats, strict=True):
        assert f_s.shape[0] == m and f_r.shape[0] == n and f_s.shape[1:] == f_r.shape[1:]
        assert f_s.shape[1] == 8 and f_s.requires_grad
    assert torch.equal(out.syn_labels, r.syn.labels) and out.real_labels.shape == (n,)
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    assert torch.isfinite(value)
    # the real side is a fixed target: no graph from it reaches the unroll (images, lr)
    assert all(not f.requires_grad and f.grad_fn is None for f in out.real_feats)
    value.backward()
    assert r.syn.images.grad.abs().sum() > 0  # through the synthetic features


def test_real_features_carry_no_gradient_to_the_images(make_run, tmp_path):
    r = make_run(tmp_path, regularizer=MIM, synthetic={"learn_lr": True})
    out = r.loss.compute(r.syn, 0, want_features=True)
    targets = [r.syn.images, r.syn.lr]
    for f in out.real_feats:
        assert f.grad_fn is None
    # the regularizer's gradient with the synthetic features held fixed is zero: only the
    # synthetic side moves the images
    held = [f.detach() for f in out.syn_feats]
    value = r.reg(held, out.syn_labels, out.real_feats, out.real_labels)
    assert not value.requires_grad or all(
        g is None for g in torch.autograd.grad(value, targets, allow_unused=True))


def test_network_gradient_false_takes_the_trained_model_as_given(make_run, tmp_path):
    r = make_run(tmp_path, regularizer={**MIM, "network_gradient": False},
                 synthetic={"learn_lr": True})
    assert r.ctx.feature_network_gradient is False
    results = {}
    for through in (False, True):
        r.ctx.feature_network_gradient = through
        torch.manual_seed(5)  # the same network, unroll and real batch both times
        out = r.loss.compute(r.syn, 0, want_features=True)
        value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
        results[through] = (out.syn_feats, *torch.autograd.grad(
            value, [r.syn.images, r.syn.lr], allow_unused=True))
    (f_off, img_off, lr_off), (f_on, img_on, lr_on) = results[False], results[True]
    for a, b in zip(f_off, f_on, strict=True):
        assert torch.equal(a.detach(), b.detach())
    # the trained model taken as given: no path to the lr, and the images' gradient is
    # the last forward pass's alone
    assert lr_off is None and lr_on is not None and lr_on.abs() > 0
    assert img_off.abs().sum() > 0 and not torch.allclose(img_off, img_on)


def test_lambda_zero_reproduces_bptt_exactly(recipe, tmp_path):
    base = assert_lambda_zero_is_exact(lambda reg: recipe(regularizer=reg), tmp_path)
    assert base.lr is None  # the inner lr is fixed, not learned


def _tiny_problem():
    torch.manual_seed(0)
    net = MLP(MLP.Params(width=6, depth=1), channels=1, num_classes=3,
              image_size=(2, 2)).double()
    model = FeaturesAndLogits(net)
    params = {k: v.detach() for k, v in model.named_parameters()}
    images = torch.randn(6, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    real = torch.randn(9, 1, 2, 2, dtype=torch.float64)
    real_y = torch.tensor([0, 1, 2] * 3)
    return model, params, images, labels, real, real_y


def _meta_loss(model, params, images, labels, lr, real, real_y, **kw):
    w = unroll(model, params, {}, images, labels, lr, **kw)
    _, logits = torch.func.functional_call(model, (w,), (real,))
    return F.cross_entropy(logits, real_y)


def test_meta_gradient_matches_finite_differences():
    model, params, images, labels, real, real_y = _tiny_problem()
    lr = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    kw = {"steps": 3, "momentum": 0.9}
    loss = _meta_loss(model, params, images, labels, lr, real, real_y, **kw)
    g_img, g_lr = torch.autograd.grad(loss, [images, lr])
    eps = 1e-6

    def at(img, step_lr):
        loss = _meta_loss(model, params, img, labels, step_lr, real, real_y, **kw)
        return float(loss.detach())

    fd_lr = (at(images.detach(), lr.detach() + eps) - at(images.detach(), lr.detach() - eps))
    torch.testing.assert_close(g_lr, torch.tensor(fd_lr / (2 * eps), dtype=torch.float64),
                               rtol=1e-6, atol=1e-9)
    bump = torch.zeros_like(images)
    bump[2, 0, 1, 0] = eps
    fd_px = at(images.detach() + bump, lr.detach()) - at(images.detach() - bump, lr.detach())
    torch.testing.assert_close(g_img[2, 0, 1, 0], torch.tensor(fd_px / (2 * eps),
                               dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_truncation_keeps_forward_and_cuts_the_prefix_gradient():
    model, params, images, labels, real, real_y = _tiny_problem()
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def loss_and_grads(**kw):
        loss = _meta_loss(model, params, images, labels, lr, real, real_y, **kw)
        return (loss.detach(), *torch.autograd.grad(loss, [images, lr]))

    full = loss_and_grads(steps=5, momentum=0.9)
    trunc = loss_and_grads(steps=5, momentum=0.9, keep_from=3)
    same = loss_and_grads(steps=5, momentum=0.9, keep_from=0)
    # forward unchanged up to rounding: the truncated prefix runs without a graph (other
    # kernels and summation order), so float64 rounding (eps 2.2e-16) over 5 steps
    torch.testing.assert_close(trunc[0], full[0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(trunc[2], full[2])  # the prefix did contribute before
    assert all(torch.equal(a, b) for a, b in zip(full, same, strict=True))
    # with momentum 0 the state after the prefix is the parameters alone: the truncated
    # gradient is exactly the full gradient of the last 2 steps started from that state
    t0 = loss_and_grads(steps=5, momentum=0.0, keep_from=3)
    start = unroll(model, params, {}, images.detach(), labels, lr.detach(), steps=3,
                   momentum=0.0)
    tail = loss_and_grads_from(model, start, images, labels, lr, real, real_y)
    for a, b in zip(t0, tail, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def loss_and_grads_from(model, start, images, labels, lr, real, real_y):
    loss = _meta_loss(model, {k: v.detach() for k, v in start.items()}, images, labels, lr,
                      real, real_y, steps=2, momentum=0.0)
    return (loss.detach(), *torch.autograd.grad(loss, [images, lr]))


def test_truncated_loss_matches_full_unroll_in_the_plugin(make_run, tmp_path):
    full = make_run(tmp_path / "f", augmentation=None, synthetic={"learn_lr": True},
                    dd_loss={"name": "bptt", "inner_steps": 6})
    trunc = make_run(tmp_path / "t", augmentation=None, synthetic={"learn_lr": True},
                     dd_loss={"name": "bptt", "inner_steps": 6, "truncate": 2})
    torch.manual_seed(7)
    a = full.loss.compute(full.syn, 0, False).loss
    torch.manual_seed(7)
    b = trunc.loss.compute(trunc.syn, 0, False).loss
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    b.backward()
    assert trunc.syn.images.grad.abs().sum() > 0 and trunc.syn.lr.grad.abs() > 0


def test_random_window_and_params(make_run, tmp_path):
    r = make_run(tmp_path, augmentation=None, dd_loss={
        "name": "bptt", "inner_steps": 5, "truncate": 2, "random_window": True,
        "batch_syn": 10})
    seen = {r.loss.compute(r.syn, 0, False).logs["bptt_steps"] for _ in range(12)}
    assert seen <= {2.0, 3.0, 4.0, 5.0} and len(seen) > 1
    with pytest.raises(ValidationError, match="random_window needs truncate"):
        BPTT.Params(random_window=True)


def test_epoch_minibatches_walk_through_permutations():
    # image i is filled with i, so the augment hook sees which images each step used
    model, params, _, _, _, _ = _tiny_problem()
    images = torch.arange(6, dtype=torch.float64)[:, None, None, None].expand(6, 1, 2, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    seen: list[list[int]] = []

    def record(x):
        seen.append(x[:, 0, 0, 0].long().tolist())
        return x

    lr = torch.tensor(0.1, dtype=torch.float64)
    unroll(model, params, {}, images.clone(), labels, lr, steps=5, momentum=0.0,
           batch_syn=4, augment=record, minibatch="epoch")
    assert [len(b) for b in seen] == [4, 2, 4, 2, 4]
    for first, second in ((0, 1), (2, 3)):  # each pair of steps is one permutation
        assert sorted(seen[first] + seen[second]) == list(range(6))
    with pytest.raises(ValueError, match="minibatch"):
        unroll(model, params, {}, images, labels, lr, steps=1, momentum=0.0,
               minibatch="sequential")
