"""CAFE: alignment and discrimination terms, the persistent network, engine integration."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    MIM,
    assert_lambda_zero_is_exact,
    assert_loss_decreases,
    assert_resume_is_exact,
    inner_training_of_next_call,
)

from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.dd_losses.cafe import CAFE as CAFELoss
from mim4dd_kit.dd_losses.cafe import (
    alignment_loss,
    cafe_terms,
    discrimination_loss,
    reference_layer_weights,
)
from mim4dd_kit.run.engine import Run

CAFEParams = CAFELoss.Params

#: DC's fixed loops, small
FIXED = {"name": "cafe", "schedule": "fixed", "outer_loop": 3, "inner_loop": 2}
#: the reference's accuracy watchers, with short windows so networks get replaced
WATCHER = {"name": "cafe", "window": 3, "watch_per_class": 16, "lambda_1": 0.5,
           "lambda_2": 0.01, "max_inner_epochs": 4}
CAFE = WATCHER


@pytest.fixture
def recipe(tiny_recipe):
    """The shared tiny recipe (digits, ConvNet 8x2, DSA, 6 iterations) with cafe."""

    def make(**changes):
        changes.setdefault("dd_loss", CAFE)
        return tiny_recipe(**changes)

    return make


def make_run(recipe, tmp_path, **changes) -> Run:
    r = Run(recipe(**changes), tmp_path, torch.device("cpu"), default_registry())
    r.setup()
    return r


def test_alignment_is_zero_for_equal_features_and_weighted_per_layer():
    torch.manual_seed(0)
    feats = [torch.randn(12, 3, 2, 2), torch.randn(12, 5)]
    y = torch.arange(4).repeat_interleave(3)
    assert float(alignment_loss(feats, y, feats, y, 4)) == 0.0
    # same class means from different samples: still zero
    syn = [f.reshape(4, 3, *f.shape[1:]).mean(1) for f in feats]
    torch.testing.assert_close(alignment_loss(feats, y, syn, torch.arange(4), 4),
                               torch.tensor(0.0), atol=1e-10, rtol=0)
    moved = [feats[0], feats[1] + 1.0]  # every class mean moves by 1 in 5 dims
    torch.testing.assert_close(alignment_loss(feats, y, moved, y, 4, [7.0, 0.5]),
                               torch.tensor(0.5 * 4 * 5))


def test_discrimination_matches_hand_computation():
    real = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    real_y = torch.tensor([0, 1, 1])
    syn = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, -1.0], [2.0, 1.0]])
    syn_y = torch.tensor([0, 0, 1, 1])
    # class means of syn: c0 = (2, 1), c1 = (1, 0); logits = <real, mean> / T with T = 2
    logits = [[1.0, 0.5], [1.0, 0.0], [1.5, 0.5]]
    expected = 0.0
    for row, y in zip(logits, [0, 1, 1], strict=True):
        expected += -row[y] + torch.logsumexp(torch.tensor(row), 0).item()
    got = discrimination_loss(real, real_y, syn, syn_y, 2, temperature=2.0)
    torch.testing.assert_close(got, torch.tensor(expected))
    assert torch.isclose(got, F.cross_entropy(torch.tensor(logits), real_y, reduction="sum"))


def test_gradients_and_features(recipe, tmp_path):
    r = make_run(recipe, tmp_path, regularizer=MIM)
    r.loss.compute(r.syn, 0, want_features=False)
    out = r.loss.compute(r.syn, 1, want_features=True)  # a trained network
    assert torch.isfinite(out.loss) and {"cafe_align", "cafe_disc"} <= set(out.logs)
    m, n = len(r.syn.labels), 10 * 24
    assert len(out.syn_feats) == len(out.real_feats) == 2
    # the regularizer gets the block outputs (what it sized its critics for)
    shapes = [tuple(f.shape[1:]) for f in r.loss.net.features(r.syn.images[:1])]
    for f_s, f_r, shape in zip(out.syn_feats, out.real_feats, shapes, strict=True):
        assert f_s.shape == (m, *shape) and f_r.shape == (n, *shape)
        assert f_s.requires_grad and not f_r.requires_grad
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    grads = [None if p.grad is None else p.grad.clone() for p in r.loss.net.parameters()]
    (out.loss + value).backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
    # the network is not trained by the distillation backward: its (inner-loop) grads stay
    for g, p in zip(grads, r.loss.net.parameters(), strict=True):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)


def test_loss_decreases_over_engine_steps(recipe, tmp_path):
    r = make_run(recipe, tmp_path, augmentation=None,
                 dd_loss={"name": "cafe", "schedule": "fixed", "outer_loop": 1,
                          "inner_loop": 0})
    # probe: outer_loop 1: a fresh network from the same seed each time
    assert_loss_decreases(r, steps=5, probe_seed=99)


def test_fixed_schedule_inner_training_and_reinit(recipe, tmp_path):
    r = make_run(recipe, tmp_path, augmentation=None, dd_loss=FIXED)
    loss = r.loss
    loss.compute(r.syn, 0, False)
    first = loss.net
    # call 1 trains the network inner_loop steps on the synthetic set
    same, steps, changed = inner_training_of_next_call(loss, r.syn, 1)
    assert same and steps == 2 and changed  # cafe counts SGD steps, not epochs
    loss.compute(r.syn, 2, False)
    loss.compute(r.syn, 3, False)  # call 3 = outer_loop: a new network
    assert loss.net is not first and loss.state_dict()["calls"] == 4


def test_lambda_zero_reproduces_cafe_exactly(recipe, tmp_path):
    assert_lambda_zero_is_exact(lambda reg: recipe(regularizer=reg), tmp_path)


def test_lambda_zero_reproduces_fixed_schedule_cafe_exactly(recipe, tmp_path):
    assert_lambda_zero_is_exact(lambda reg: recipe(regularizer=reg, dd_loss=FIXED), tmp_path)


def test_resume_restores_the_persistent_network(recipe, tmp_path):
    # checkpoint at iteration 4: call 4 trains the network made at call 3 (outer_loop 3)
    assert_resume_is_exact(recipe(dd_loss=FIXED), tmp_path)


def test_resume_restores_the_watchers(recipe, tmp_path):
    # lambda_1 0.5 over windows of 3: networks are replaced within the 6 iterations, so the
    # checkpoint at 4 holds a part-filled watcher window and a trained network
    assert_resume_is_exact(recipe(), tmp_path, stop_after=4)


# -- fidelity to the reference (kaiwang960112/CAFE distill.py, networks.py) ------------------
def test_defaults_are_the_reference_settings():
    p = CAFEParams()
    assert p.tap == "pre_pool" and p.layer_weights is None
    assert reference_layer_weights(3) == [0.1, 0.1, 1.0]  # --fourth/third/second_weight
    assert p.output_weight == 1.0 and p.embed_weight == 1.0  # --first_weight, loss_output
    assert p.disc_weight == 0.01 and p.temperature == 1.0  # --inner_weight
    assert p.schedule == "watcher" and (p.lambda_1, p.lambda_2) == (0.04, 0.03)
    assert p.window == 10 and p.watch_per_class == 128
    assert (p.net_lr, p.net_momentum, p.batch_train) == (0.01, 0.0, 256)


def _reference_style_loss(net, real, real_y, syn, syn_y, c):
    """The reference's loss written out from its own layer slicing of a 3-block ConvNet
    (features[:-9], [-9:-5], [-5:-1], [-1:]) and criterion_middle (class-grouped rows)."""
    layers = [m for block in net.blocks for m in block]

    def taps(x):
        f1 = x = torch.nn.Sequential(*layers[:-9])(x)
        f2 = x = torch.nn.Sequential(*layers[-9:-5])(x)
        f3 = x = torch.nn.Sequential(*layers[-5:-1])(x)
        f4 = layers[-1](x)
        return [f4.flatten(1), f4, f3, f2, f1]

    def middle(a, b):  # per-class means of class-grouped rows, summed squared error
        ma = a.reshape(c, len(a) // c, *a.shape[1:]).mean(1)
        mb = b.reshape(c, len(b) // c, *b.shape[1:]).mean(1)
        return F.mse_loss(ma, mb, reduction="sum")

    fr, fs = taps(real), taps(syn)
    loss = (0.1 * middle(fr[-1], fs[-1]) + 0.1 * middle(fr[-2], fs[-2])
            + 1.0 * middle(fr[-3], fs[-3]) + 1.0 * middle(fr[-4], fs[-4]))
    centres = fs[0].reshape(c, len(syn) // c, -1).mean(1)
    loss = loss + middle(fs[0], fr[0]) + 0.01 * F.cross_entropy(fr[0] @ centres.t(), real_y,
                                                                 reduction="sum")
    return loss


def test_loss_equals_the_reference_formula():
    torch.manual_seed(0)
    reg = default_registry()
    net = reg.build("backbones", {"name": "convnet", "width": 6, "depth": 3},
                    channels=3, num_classes=4, image_size=(16, 16))
    real_y = torch.arange(4).repeat_interleave(5)
    syn_y = torch.arange(4).repeat_interleave(2)
    real, syn = torch.randn(20, 3, 16, 16), torch.randn(8, 3, 16, 16)
    align, disc, _, syn_out = cafe_terms(net, real, real_y, syn, syn_y, 4, CAFEParams())
    expected = _reference_style_loss(net, real, real_y, syn, syn_y, 4)
    torch.testing.assert_close(align + 0.01 * disc, expected)
    # a post-pool, all-ones variant (the toolkit's old loss) is a different number
    old = CAFEParams(tap="output", layer_weights=[1.0, 1.0, 0.0], embed_weight=0.0)
    a2, d2, _, _ = cafe_terms(net, real, real_y, syn, syn_y, 4, old)
    assert not torch.isclose(a2 + 0.01 * d2, expected)
    torch.testing.assert_close(syn_out[-1], net.features(syn)[-1])


class _Scripted:
    """Replaces a watcher's accuracy readings with a script."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, carry):
        return self.values.pop(0)


def _watched(recipe, tmp_path, **params):
    r = make_run(recipe, tmp_path, augmentation=None,
                 dd_loss={"name": "cafe", "window": 3, "watch_per_class": 8, **params})
    return r, r.loss.schedule


def test_outer_watcher_replaces_a_network_once_its_accuracy_settles(recipe, tmp_path):
    r, sched = _watched(recipe, tmp_path, lambda_1=0.04, lambda_2=0.03)
    # inner loops end after 3 epochs (range 0.5 > 0.03); outer readings 0.1, 0.5, 0.52
    # (range 0.42, keep), 0.53 (0.5..0.53: range 0.03 < 0.04, replace)
    inner = [0.0, 0.0, 0.5]
    sched.reading = _Scripted([0.1] + inner + [0.5] + inner + [0.52] + inner + [0.53]
                              + [0.2])
    epochs = []
    for it in range(4):
        r.loss.compute(r.syn, it, False)
        epochs.append(sched.last_inner_epochs)
    assert epochs == [0, 3, 3, 3] and sched.networks == 1 and sched.finished
    first = r.loss.net
    r.loss.compute(r.syn, 4, False)  # a new network, no inner training
    assert r.loss.net is not first and sched.networks == 2 and sched.outer == [0.2]
    assert sched.last_inner_epochs == 0


def test_inner_watcher_trains_until_accuracy_moves_and_is_bounded(recipe, tmp_path):
    r, sched = _watched(recipe, tmp_path, lambda_2=0.03, max_inner_epochs=6)
    sched.reading = _Scripted([0.1] + [0.2, 0.21, 0.22, 0.23, 0.26] + [0.1])
    r.loss.compute(r.syn, 0, False)
    net = r.loss.net
    before = [q.detach().clone() for q in net.parameters()]
    r.loss.compute(r.syn, 1, False)
    # windows (0.2..0.22) 0.02, (0.21..0.23) 0.02, (0.22..0.26) 0.04 > 0.03: 5 epochs
    assert sched.last_inner_epochs == 5 and r.loss.net is net
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    sched.reading = _Scripted([0.5] * 6 + [0.1])  # never moves: the bound stops it
    r.loss.compute(r.syn, 2, False)
    assert sched.last_inner_epochs == 6 and sched.capped == 1


def test_a_reading_is_accuracy_plus_the_carried_value_over_c(recipe, tmp_path):
    r, sched = _watched(recipe, tmp_path)
    r.loss.compute(r.syn, 0, False)
    net = r.loss.net
    with torch.no_grad():  # predict class 0 for everything: accuracy exactly 1 / C
        net.classifier.weight.zero_()
        net.classifier.bias.copy_(torch.eye(10)[0])
    assert sched.reading(0.0) == pytest.approx(0.1)
    assert sched.reading(0.5) == pytest.approx(0.1 + 0.05)


def test_schedule_specific_fields_are_refused_with_the_other_schedule():
    with pytest.raises(ValueError, match="outer_loop applies only to schedule: fixed; remove it"):
        CAFEParams(outer_loop=3)
    with pytest.raises(ValueError, match="lambda_1 applies only to schedule: watcher"):
        CAFEParams(schedule="fixed", lambda_1=0.1)
    with pytest.raises(ValueError, match="lambda_1, window apply only to schedule: watcher"):
        CAFEParams(schedule="fixed", window=3, lambda_1=0.1)
    assert CAFEParams(schedule="fixed", outer_loop=3).outer_loop == 3


@pytest.mark.parametrize("ipc", [1, 10, 50])
def test_shipped_recipes_carry_the_reference_settings(ipc):
    from pathlib import Path

    from mim4dd_kit.config.recipe import load_recipe

    root = Path(__file__).parents[2] / "recipes"
    for suffix in ("", "_mim"):
        r = load_recipe(root / f"fashion_mnist_ipc{ipc}_cafe{suffix}.yaml")
        loss = CAFEParams.model_validate(r.dd_loss.params)
        assert loss.tap == "pre_pool" and loss.schedule == "watcher"
        assert (loss.lambda_1, loss.lambda_2, loss.disc_weight) == (0.04, 0.03, 0.01)
        assert loss.layer_weights is None and loss.net_lr == 0.01
        s = r.synthetic
        assert (s.init, s.lr, s.momentum, s.batch_real) == ("noise", 0.1, 0.5, 256)
        assert r.augmentation is None  # the reference distils without DSA by default
        # 2,000 networks of at least 11 updates; lr halved at 1,200 / 1,600 / 1,800 of 2,000
        assert s.iterations % 2000 == 0 and s.iterations >= 2000 * 11
        assert s.schedule.gamma == 0.5
        assert s.schedule.milestones == [s.iterations * k // 2000 for k in (1200, 1600, 1800)]
