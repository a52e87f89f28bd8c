"""MTT: the normalised trajectory distance, its gradients, features and engine integration."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    MIM,
    assert_lambda_zero_is_exact,
    assert_loss_decreases,
    assert_resume_is_exact,
    distilled,
    merged,
    set_up_run,
)
from torch.nn.utils import vector_to_parameters

from mim4dd_kit.dd_losses.mtt import MTT, buffers
from mim4dd_kit.dd_losses.mtt.buffers import buffer_dir, load_expert
from mim4dd_kit.run.engine import Run

# changes to the shared tiny recipe (tests/conftest.py): 2 experts trained 3 epochs
MTT_CHANGES = {
    "name": "tiny_mtt",
    "synthetic": {"ipc": 2, "iterations": 4, "lr": 100.0, "batch_real": 8},
    "dd_loss": {"name": "mtt", "num_experts": 2, "max_start_epoch": 2, "expert_epochs": 1,
                "syn_steps": 3, "expert_batch": 512},
    "output": {"checkpoint_every": 2},
}


pytestmark = pytest.mark.usefixtures("module_cache")


@pytest.fixture
def recipe(tiny_recipe):
    def make(**changes):
        return tiny_recipe(**merged(MTT_CHANGES, changes))

    return make


@pytest.fixture
def make_run(recipe, tmp_path):
    def make(**changes) -> Run:
        return set_up_run(recipe(**changes), tmp_path)

    return make


def _load(net, flat):
    vector_to_parameters(flat, net.parameters())
    return net


def test_gradients_reach_images_and_lr(make_run):
    r = make_run()
    assert r.syn.lr is not None and r.syn.lr.item() == pytest.approx(0.01)  # lr_teacher
    out = r.loss.compute(r.syn, 0, want_features=False)
    assert torch.isfinite(out.loss) and out.loss > 0
    assert {"mtt_expert", "mtt_start_epoch", "mtt_student_dist", "mtt_expert_dist"} <= set(
        out.logs)
    torch.testing.assert_close(out.loss.detach(), torch.tensor(
        out.logs["mtt_student_dist"] / out.logs["mtt_expert_dist"]))
    out.loss.backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
    assert r.syn.lr.grad is not None and r.syn.lr.grad.abs() > 0


def test_zero_lr_keeps_the_student_at_the_start(make_run):
    r = make_run()
    r.syn.lr = torch.tensor(0.0, requires_grad=True)
    out = r.loss.compute(r.syn, 0, want_features=False)
    assert out.loss.item() == 1.0  # ||θ_t − θ_target||² / itself
    out.loss.backward()
    assert r.syn.lr.grad < 0  # a step along the synthetic gradient moves towards the target


def test_loss_matches_a_plain_sgd_step(make_run):
    r = make_run(augmentation=None, dd_loss={"syn_steps": 1})
    with torch.no_grad():
        r.syn.lr.fill_(0.05)
    torch.manual_seed(5)
    out = r.loss.compute(r.syn, 0, want_features=False)
    torch.manual_seed(5)  # the draws: expert, then start epoch
    e, t = int(torch.randint(2, ()).item()), int(torch.randint(2, ()).item())
    assert (out.logs["mtt_expert"], out.logs["mtt_start_epoch"]) == (e, t)
    traj = load_expert(r.loss.folder, e)
    start, target = traj[t], traj[t + 1]
    net = _load(r.ctx.make_backbone(), start)
    ce = F.cross_entropy(net(r.syn.images.detach()), r.syn.labels)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ce, list(net.parameters()))])
    student = start - 0.05 * grad
    expected = ((student - target) ** 2).sum() / ((start - target) ** 2).sum()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=0)
    logs = [r.loss.compute(r.syn, 0, False).logs for _ in range(12)]
    assert {x["mtt_expert"] for x in logs} == {0.0, 1.0}  # U{0 .. num_experts - 1}
    assert {x["mtt_start_epoch"] for x in logs} == {0.0, 1.0}  # U{0 .. max_start - 1}


def test_loss_decreases_over_engine_steps(make_run):
    r = make_run(augmentation=None)
    # probe: the same expert and start epoch every time
    assert_loss_decreases(r, steps=5, probe_seed=11)


def test_features_for_the_regularizer(make_run):
    r = make_run(regularizer=MIM)
    torch.manual_seed(3)
    plain = r.loss.compute(r.syn, 0, want_features=False)
    after_plain = torch.get_rng_state()
    torch.manual_seed(3)
    out = r.loss.compute(r.syn, 0, want_features=True)
    # asking for features draws nothing from the run's stream and leaves L_DD alone
    assert torch.equal(torch.get_rng_state(), after_plain)
    assert torch.equal(out.loss.detach(), plain.loss.detach())
    m, n = len(r.syn.labels), 10 * 8
    assert len(out.syn_feats) == len(out.real_feats) == 2
    for f_s, f_r in zip(out.syn_feats, out.real_feats, strict=True):
        assert f_s.shape[0] == m and f_r.shape[0] == n and f_s.shape[1:] == f_r.shape[1:]
        assert f_s.shape[1] == 8 and f_s.requires_grad and not f_r.requires_grad
    assert torch.equal(out.syn_labels, r.syn.labels) and out.real_labels.shape == (n,)
    # real side: the expert at the target epoch on the (augmented) real batch
    e, t = int(out.logs["mtt_expert"]), int(out.logs["mtt_start_epoch"])
    expert = _load(r.ctx.make_backbone(), load_expert(r.loss.folder, e)[t + 1])
    real, _, syn_view = r.loss._feature_batches(r.syn, 0)
    with torch.no_grad():
        for got, want in zip(out.real_feats, expert.features(real), strict=True):
            torch.testing.assert_close(got, want)
    # synthetic side: the same siamese view (not the raw images), through the student
    assert not torch.equal(syn_view, r.syn.images)
    # synthetic side: the student after its steps, so gradient reaches images and lr
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    assert torch.isfinite(value)
    value.backward()
    assert r.syn.images.grad.abs().sum() > 0 and r.syn.lr.grad.abs() > 0


def _regularizer_grads(r, network_gradient):
    """(synthetic features, image gradient, lr gradient) of the regularizer at iteration 0,
    the loss's draws fixed, with ``network_gradient`` as given."""
    r.ctx.feature_network_gradient = network_gradient
    torch.manual_seed(3)
    out = r.loss.compute(r.syn, 0, want_features=True)
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    g_img, g_lr = torch.autograd.grad(value, [r.syn.images, r.syn.lr], allow_unused=True)
    return out.syn_feats, g_img, g_lr


def test_network_gradient_false_takes_the_student_as_given(make_run):
    r = make_run(regularizer={**MIM, "network_gradient": False})
    assert r.ctx.feature_network_gradient is False  # the engine reads the parameter
    feats_off, img_off, lr_off = _regularizer_grads(r, False)
    feats_on, img_on, lr_on = _regularizer_grads(r, True)
    # the same features (the student after its steps) either way; only the graph differs
    for a, b in zip(feats_off, feats_on, strict=True):
        assert torch.equal(a.detach(), b.detach())
    # taken as given, the student's weights do not depend on the lr, and the images get
    # the gradient of the one forward pass alone, not the part through the unroll
    assert lr_off is None and lr_on is not None and lr_on.abs() > 0
    assert img_off.abs().sum() > 0 and not torch.allclose(img_off, img_on)


@pytest.mark.parametrize(("preset", "given"), [("critic_free", True), ("literal", False)])
def test_the_shipped_preset_takes_the_student_as_given_and_literal_does_not(
        make_run, preset, given):
    r = make_run(regularizer={"name": "mim4dd", "preset": preset})
    assert r.ctx.feature_network_gradient is (not given)
    _, _, g_lr = _regularizer_grads(r, r.ctx.feature_network_gradient)
    assert (g_lr is None) is given


def test_batchnorm_backbone_uses_the_expert_statistics_without_changing_them(make_run):
    r = make_run(backbone={"name": "convnet", "width": 8, "depth": 2, "norm": "batch"},
                 regularizer=MIM)
    torch.manual_seed(2)
    first = r.loss.compute(r.syn, 0, want_features=True)
    torch.manual_seed(2)
    again = r.loss.compute(r.syn, 0, want_features=True)
    # train-mode BatchNorm updates running statistics in place: on copies, not the cache
    assert torch.equal(first.loss.detach(), again.loss.detach())
    e, t = int(first.logs["mtt_expert"]), int(first.logs["mtt_start_epoch"])
    stats = buffers.load_expert_buffers(r.loss.folder, e, [t])
    assert stats["blocks.0.1.num_batches_tracked"].item() == 3 * t  # 1437 images / 512
    (first.loss + r.reg(first.syn_feats, first.syn_labels, first.real_feats,
                        first.real_labels)).backward()
    assert r.syn.images.grad.abs().sum() > 0 and r.syn.lr.grad.abs() > 0


def test_lambda_zero_reproduces_mtt_exactly(recipe, tmp_path):
    base = assert_lambda_zero_is_exact(lambda reg: recipe(regularizer=reg), tmp_path)
    assert base.lr is not None


def test_building_the_buffer_or_reusing_it_gives_the_same_images(
        recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("MDK_CACHE", str(tmp_path / "fresh"))
    rec = recipe()
    built = distilled(rec, tmp_path / "a")  # trains the experts first
    calls = []
    monkeypatch.setattr(buffers, "train_expert", lambda *a, **k: calls.append(a))
    reused = distilled(rec, tmp_path / "b")
    assert calls == []  # the second run trained nothing
    assert (tmp_path / "fresh" / "buffers").is_dir()
    assert torch.equal(built.images, reused.images) and built.lr == reused.lr


def test_resume_equals_an_uninterrupted_run(recipe, tmp_path):
    rec = recipe()
    assert_resume_is_exact(rec, tmp_path, stop_after=3)


def test_the_buffer_lives_under_the_cache(make_run):
    r = make_run()
    assert r.loss.folder == buffer_dir(r.ctx, r.loss.params)
    assert r.loss.state_dict() == {}


def test_reference_defaults_and_the_two_lrs():
    # buffer.py trains experts at its default 0.01; distill.py's --lr_teacher only starts
    # the learned synthetic lr
    p = MTT.Params()
    assert p.expert_lr == 0.01 and p.lr_teacher == 0.01
    assert MTT.Params(lr_teacher=0.001).expert_lr == 0.01


def test_lr_teacher_initialises_the_learned_lr(make_run):
    r = make_run(dd_loss={"lr_teacher": 0.005})
    assert r.syn.lr.item() == pytest.approx(0.005)
    assert r.opt_lr.defaults["momentum"] == 0.5  # distill.py: SGD momentum 0.5 on syn_lr
    assert r.opt_img.defaults["momentum"] == 0.5  # and on the images
    # the experts did not move: lr_teacher is not part of the buffer key
    assert r.loss.folder == make_run().loss.folder
    given = make_run(dd_loss={"lr_teacher": 0.005}, synthetic={"lr_init": 0.02})
    assert given.syn.lr.item() == pytest.approx(0.02)  # an explicit lr_init wins


def test_experts_train_at_expert_lr(make_run, monkeypatch):
    seen: list[float] = []
    real_sgd = torch.optim.SGD

    def recording(params, lr, **kw):
        seen.append(lr)
        return real_sgd(params, lr, **kw)

    monkeypatch.setattr(torch.optim, "SGD", recording)
    r = make_run(dd_loss={"lr_teacher": 0.001, "expert_lr": 0.02, "num_experts": 1})
    # the expert optimiser (built first, for the missing buffer) ran at expert_lr
    assert seen[0] == 0.02
    prov = json.loads((r.loss.folder / "buffer.json").read_text())
    assert prov["inputs"]["expert_lr"] == 0.02 and "lr_teacher" not in prov["inputs"]
    assert r.syn.lr.item() == pytest.approx(0.001)


def test_student_steps_augment_the_synthetic_batch(make_run):
    calls: list[int] = []
    r = make_run(dd_loss={"batch_syn": 8})
    real = r.ctx.augment

    class Counting:
        def __call__(self, x, generator=None):
            calls.append(len(x))
            return real(x)

        def siamese(self, *args, **kw):
            calls.append(-1)
            return real.siamese(*args, **kw)

    r.loss.ctx.augment = Counting()
    r.loss.compute(r.syn, 0, want_features=False)
    # distill.py: DSA on every student step's minibatch (20 images in chunks of 8)
    assert calls == [8, 8, 4]
    calls.clear()
    r.loss.compute(r.syn, 0, want_features=True)
    assert calls == [8, 8, 4, -1]  # then one siamese draw for the regularizer's features
