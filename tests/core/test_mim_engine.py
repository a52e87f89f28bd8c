"""MIM4DD's engine side: critic schedule, gradient-relative weight, diagnostics, guards."""

import json

import pytest
import torch
from helpers import MIM, assert_resume_is_exact, distilled, merged, set_up_run

STABLE = {"name": "mim4dd", "critic": MIM["critic"], "preset": "stable", "critic_warmup": 3,
          "ramp": 2}


def _history(path):
    return [json.loads(line) for line in (path / "losses.jsonl").read_text().splitlines()]


def test_critic_only_steps_leave_the_base_trajectory_alone(tiny_recipe, tmp_path):
    # lambda 0: the images are the base method's bit for bit, whatever the critics do
    base = distilled(tiny_recipe(), tmp_path / "base")
    steps = {**MIM, "lambda": 0.0, "critic_steps": 2, "critic_warmup": 3}
    zero = distilled(tiny_recipe(regularizer=steps), tmp_path / "zero")
    assert torch.equal(base.images, zero.images)


def test_critic_only_steps_train_the_critics_without_touching_images(tiny_recipe, tmp_path):
    run = set_up_run(tiny_recipe(regularizer={**MIM, "critic_warmup": 4}), tmp_path)
    torch.manual_seed(0)
    out = run.loss.compute(run.syn, 0, True)
    images = run.syn.images.detach().clone()
    before = [p.detach().clone() for p in run.reg.parameters()]

    def nce():
        return float(run.reg.critic_loss(out.syn_feats, out.syn_labels, out.real_feats,
                                         out.real_labels).detach())

    losses = [nce()]
    run._critic_only_steps(out, 0)
    losses.append(nce())
    assert torch.equal(run.syn.images, images)
    assert all(not torch.equal(a, b) for a, b in zip(before, run.reg.parameters(), strict=True))
    assert losses[1] < losses[0]  # four Adam steps on the same features lower the NCE
    # later iterations take critic_steps (0 here): nothing moves
    after = [p.detach().clone() for p in run.reg.parameters()]
    run._critic_only_steps(out, 1)
    assert all(torch.equal(a, b) for a, b in zip(after, run.reg.parameters(), strict=True))


def test_diagnostics_do_not_change_the_trajectory(tiny_recipe, tmp_path):
    off = distilled(tiny_recipe(regularizer={**MIM, "diagnostics_every": 0}), tmp_path / "off")
    on = distilled(tiny_recipe(regularizer={**MIM, "diagnostics_every": 1}), tmp_path / "on")
    assert torch.equal(off.images, on.images)
    logs = _history(tmp_path / "on")
    first = logs[0]
    for key in ("grad_dd", "grad_reg", "grad_ratio", "img_std", "mi1", "mi2", "pos1",
                "neg2", "nce1"):
        assert key in first, key
    assert first["grad_ratio"] == pytest.approx(first["grad_reg"] / first["grad_dd"])
    assert "grad_dd" not in _history(tmp_path / "off")[0]
    # the bound is log(C - 1) + E_P log h <= log(C - 1)
    assert all(h["mi1"] <= torch.log(torch.tensor(9.0)).item() for h in logs)


def test_diagnostic_norms_are_the_two_gradients(tiny_recipe, tmp_path):
    run = set_up_run(tiny_recipe(regularizer={**MIM, "diagnostics_every": 1}), tmp_path)
    state = torch.random.get_rng_state()
    logs = run.step(0)
    # redo iteration 0 by hand from the same images and draws
    fresh = set_up_run(tiny_recipe(regularizer={**MIM, "diagnostics_every": 1}),
                       tmp_path / "b")
    torch.random.set_rng_state(state)
    out = fresh.loss.compute(fresh.syn, 0, True)
    r = fresh.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    g_dd, = torch.autograd.grad(out.loss, [fresh.syn.images], retain_graph=True)
    g_reg, = torch.autograd.grad(r, [fresh.syn.images])
    assert logs["grad_dd"] == pytest.approx(g_dd.norm().item(), rel=1e-4)
    assert logs["grad_reg"] == pytest.approx(g_reg.norm().item(), rel=1e-5)


def test_rho_sets_the_gradient_ratio(tiny_recipe, tmp_path):
    reg = {**MIM, "rho": 0.25, "ramp": 2, "diagnostics_every": 1}
    distilled(tiny_recipe(regularizer=reg), tmp_path / "rho")
    ratios = [h["grad_ratio"] for h in _history(tmp_path / "rho")]
    # ramp 2: 0 at the first iteration, half at the second, then rho
    assert ratios[0] == 0.0
    assert ratios[1] == pytest.approx(0.125, rel=1e-5)
    assert ratios[2:] == pytest.approx([0.25] * (len(ratios) - 2), rel=1e-5)


def test_rho_window_caps_the_step_at_the_median_of_recent_dd_norms(tiny_recipe, tmp_path):
    reg = {**MIM, "rho": 0.5, "ramp": 0, "rho_window": 3, "rho_cap": 1.0,
           "diagnostics_every": 1}
    distilled(tiny_recipe(regularizer=reg), tmp_path / "w")
    logs = _history(tmp_path / "w")
    dd = [h["grad_dd"] for h in logs]
    for t, h in enumerate(logs):  # rho x min(this norm, median of the last three)
        window = sorted(dd[max(0, t - 2):t + 1])
        reference = min(dd[t], window[(len(window) - 1) // 2])
        assert h["grad_reg"] == pytest.approx(0.5 * reference, rel=1e-5)
    assert any(h["grad_reg"] < 0.5 * h["grad_dd"] * (1 - 1e-3) for h in logs)  # it capped


def test_rho_window_survives_a_resume(tiny_recipe, tmp_path):
    reg = {**MIM, "rho": 0.5, "ramp": 0, "rho_window": 3}
    assert_resume_is_exact(tiny_recipe(regularizer=reg, synthetic={"iterations": 6}), tmp_path,
                           stop_after=4)


def test_rho_with_zero_ramp_step_equals_the_base_step(tiny_recipe, tmp_path):
    # at the ramp's first iteration the rescaled regularizer gradient is 0: one iteration
    # gives the base method's images exactly
    one = {"iterations": 1}
    base = distilled(tiny_recipe(synthetic=one), tmp_path / "base")
    rho = distilled(tiny_recipe(synthetic=one, regularizer={**MIM, "rho": 0.5, "ramp": 3}),
                    tmp_path / "rho")
    assert torch.equal(base.images, rho.images)


BPTT = {"name": "tiny_bptt", "synthetic": {"iterations": 1, "learn_lr": True},
        "dd_loss": {"name": "bptt", "inner_steps": 3}, "output": {"checkpoint_every": 0}}


def test_rho_keeps_the_learned_lr_the_base_methods_unless_asked(tiny_recipe, tmp_path):
    def lr_after(reg, name):
        return distilled(tiny_recipe(**merged(BPTT, {"regularizer": reg})), tmp_path / name).lr

    base = lr_after(None, "base")
    off = lr_after({**MIM, "rho": 0.5}, "off")
    on = lr_after({**MIM, "rho": 0.5, "lr_gradient": True}, "on")
    assert off == base  # one iteration: the lr moved by the DD gradient alone
    assert on != base


def test_stable_preset_resumes_exactly(tiny_recipe, tmp_path):
    # Z (fixed at the first call), the critics' warm-up and rho all survive a resume
    assert_resume_is_exact(tiny_recipe(regularizer=STABLE), tmp_path, stop_after=3)


def test_guard_warns_once_when_images_blow_up(tiny_recipe, tmp_path, capfd):
    recipe = tiny_recipe(synthetic={"lr": 1e5, "iterations": 4},
                         regularizer={**MIM, "diagnostics_every": 0})
    distilled(recipe, tmp_path / "blow")
    err = capfd.readouterr().err
    assert err.count("pixel std") == 1 and "synthetic.lr" in err
    # without a regularizer the advice names only what the run has
    distilled(tiny_recipe(synthetic={"lr": 1e5, "iterations": 4}, regularizer=None),
              tmp_path / "base")
    err = capfd.readouterr().err
    assert err.count("pixel std") == 1 and "synthetic.lr" in err and "regularizer" not in err


def test_guard_warns_when_the_regularizer_dominates(tiny_recipe, tmp_path, capfd):
    recipe = tiny_recipe(regularizer={**MIM, "lambda": 1e4, "diagnostics_every": 1},
                         synthetic={"lr": 1e-6})
    distilled(recipe, tmp_path / "big")
    err = capfd.readouterr().err
    assert err.count("regularizer's image gradient") == 1 and "regularizer.rho" in err
    quiet = tiny_recipe(regularizer={**MIM, "rho": 0.1, "diagnostics_every": 1})
    distilled(quiet, tmp_path / "quiet")
    assert "regularizer's image gradient" not in capfd.readouterr().err


def test_for_regularizer_reuses_outputs_and_taps_otherwise():
    from mim4dd_kit.api.features import for_regularizer
    from mim4dd_kit.backbones.convnet import ConvNet

    torch.manual_seed(0)
    net = ConvNet(ConvNet.Params(width=4, depth=2), channels=1, num_classes=3,
                  image_size=(8, 8))
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    outputs = net.features(x)
    assert for_regularizer("output", net, x, outputs) is outputs
    pre = for_regularizer("pre_activation", net, x, outputs)
    # digits in ConvNet: padding 3 on the first conv, so 12x12 and 6x6 before pooling
    assert [tuple(f.shape) for f in pre] == [(5, 4, 12, 12), (5, 4, 6, 6)]
    assert (pre[0] < 0).any() and pre[0].requires_grad  # before the ReLU: signed
    real = for_regularizer("pre_activation", lambda v, t: net.features(v, tap=t), x, outputs,
                           grad=False)
    assert torch.equal(real[1], pre[1].detach()) and not real[1].requires_grad


@pytest.mark.parametrize("loss", [{"name": "dm"}, {"name": "dsa", "outer_loop": 2,
                                                   "inner_loop": 1}])
def test_pre_activation_tap_feeds_the_regularizer(tiny_recipe, tmp_path, loss):
    tap = {**MIM, "tap": "pre_activation", "diagnostics_every": 1}
    run = set_up_run(tiny_recipe(dd_loss=loss, regularizer=tap), tmp_path)
    assert run.ctx.feature_tap == "pre_activation"
    # the critics see the blocks before their ReLU and pooling: 12x12 and 6x6 maps, width 8
    assert [c.fc.in_features for c in run.reg.critics] == [8 * 12 * 12, 8 * 6 * 6]
    torch.manual_seed(0)
    out = run.loss.compute(run.syn, 0, True)
    assert [tuple(f.shape[1:]) for f in out.syn_feats] == [(8, 12, 12), (8, 6, 6)]
    assert min(float(f.detach().min()) for f in out.syn_feats) < 0
    # lambda 0 with the tap keeps the base method's trajectory
    base = distilled(tiny_recipe(dd_loss=loss, synthetic={"iterations": 3}), tmp_path / "b")
    zero = distilled(tiny_recipe(dd_loss=loss, synthetic={"iterations": 3},
                                 regularizer={**tap, "lambda": 0.0}), tmp_path / "z")
    assert torch.equal(base.images, zero.images)


def test_pre_activation_tap_in_unrolled_losses(tiny_recipe, tmp_path):
    tap = {**MIM, "tap": "pre_activation"}
    run = set_up_run(tiny_recipe(**merged(BPTT, {"regularizer": tap})), tmp_path)
    torch.manual_seed(0)
    out = run.loss.compute(run.syn, 0, True)
    assert [tuple(f.shape[1:]) for f in out.syn_feats] == [(8, 12, 12), (8, 6, 6)]
    assert [tuple(f.shape[1:]) for f in out.real_feats] == [(8, 12, 12), (8, 6, 6)]
    assert not out.real_feats[0].requires_grad and out.syn_feats[0].requires_grad
    assert all(torch.isfinite(torch.tensor(v)) for v in run.step(0).values())
