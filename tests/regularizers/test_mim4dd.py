"""MIM4DD regularizer against values computed by hand (SPEC section 2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.regularizers.mim4dd import MIM4DD, layer_weights
from mim4dd_kit.training.mi import mi_lower_bound, nce_loss


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _reference_nce(scores, positive, c):
    pairs = [(s, p) for row, prow in zip(scores, positive, strict=True)
             for s, p in zip(row, prow, strict=True)]
    pos = [s for s, p in pairs if p]
    neg = [s for s, p in pairs if not p]
    mp = sum(_logsig(s) for s in pos) / len(pos) if pos else 0.0
    mn = sum(_logsig(-s) for s in neg) / len(neg) if neg else 0.0
    return -(mp + (c - 1) * mn)


def test_nce_loss_matches_hand_computation():
    scores = [[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]
    positive = [[True, False, False], [False, True, True]]
    got = nce_loss(torch.tensor(scores, dtype=torch.float64), torch.tensor(positive), 4)
    assert got.item() == pytest.approx(_reference_nce(scores, positive, 4), rel=1e-12)


def test_all_positive_and_all_negative_batches_are_finite():
    s = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
    all_pos = nce_loss(s, torch.ones(2, 2, dtype=torch.bool), 10)
    all_neg = nce_loss(s, torch.zeros(2, 2, dtype=torch.bool), 10)
    assert all_pos.item() == pytest.approx(-sum(_logsig(v) for v in s.flatten().tolist()) / 4)
    assert all_neg.item() == pytest.approx(-9 * sum(_logsig(-v) for v in s.flatten().tolist()) / 4)


def test_extreme_scores_stay_finite():
    s = torch.tensor([[1e4, -1e4]], requires_grad=True)
    loss = nce_loss(s, torch.tensor([[True, False]]), 3)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(s.grad).all()


def test_layer_weights_follow_eq_2_17():
    # 1 / beta^(K-1-k) for k = 1..K with K = 3, beta = 2
    assert layer_weights(3, 2.0) == [0.5, 1.0, 2.0]
    assert layer_weights(4, 0.5) == [4.0, 2.0, 1.0, 0.5]


def test_mi_lower_bound_is_log_c_minus_1_plus_positive_mean():
    s = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    got = mi_lower_bound(s, torch.tensor([[True, False]]), 10)
    assert got.item() == pytest.approx(math.log(9) + _logsig(2.0))


def _build(**params):
    p = MIM4DD.Params.model_validate({"preset": "literal", **params})
    return MIM4DD(p, num_classes=3, feature_dims=[4, 6], registry=default_registry())


def test_identity_critic_total_matches_manual_sum():
    torch.manual_seed(0)
    reg = _build(**{"lambda": 0.8, "beta": 2.0, "tau": 0.5, "normalize": False,
                    "critic": {"name": "identity"}})
    syn = [torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)]
    real = [torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)]
    ys, yr = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1, 2, 2])
    got = reg(syn, ys, real, yr)
    positive = (ys[:, None] == yr[None, :]).tolist()
    expected = 0.0
    for k, w in zip(range(2), [1.0, 2.0], strict=True):  # K = 2: weights 1/2^0, 1/2^-1
        s = (syn[k].flatten(1) @ real[k].flatten(1).T / 0.5).tolist()
        expected += w * _reference_nce(s, positive, 3)
    assert got.item() == pytest.approx(0.8 * expected, rel=1e-10)
    assert set(reg.last_logs) == {"nce1", "nce2"}


def test_gradients_reach_synthetic_features_and_critics():
    torch.manual_seed(0)
    reg = _build(critic={"name": "linear", "out_dim": 8})
    syn = [torch.randn(6, 4, requires_grad=True), torch.randn(6, 6, requires_grad=True)]
    real = [torch.randn(9, 4), torch.randn(9, 6)]
    loss = reg(syn, torch.arange(3).repeat(2), real, torch.arange(3).repeat(3))
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in syn)
    grads = [p.grad for p in reg.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_lambda_zero_gives_zero_and_no_image_gradient():
    reg = _build(**{"lambda": 0.0})
    syn = [torch.randn(3, 4, requires_grad=True), torch.randn(3, 6, requires_grad=True)]
    loss = reg(syn, torch.arange(3), [torch.randn(4, 4), torch.randn(4, 6)], torch.arange(4) % 3)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(f.grad) == 0 for f in syn)


def test_layer_subset_uses_true_layer_weights():
    reg = _build(layers=[2], critic={"name": "identity"})
    assert reg.layers == [2] and reg.weights.tolist() == [2.0] and len(reg.critics) == 1


def test_score_matrix_is_m_by_n():
    reg = _build(critic={"name": "identity"})
    scores = reg.scores([torch.randn(3, 4), torch.randn(3, 6)], [torch.randn(7, 4),
                                                                  torch.randn(7, 6)])
    assert [tuple(s.shape) for s in scores] == [(3, 7), (3, 7)]


def test_beta_must_exceed_one_unless_ablation():
    with pytest.raises(ValidationError, match="must be > 1"):
        MIM4DD.Params(beta=1.0)
    assert MIM4DD.Params(beta=0.5, strict_beta=False).beta == 0.5


def test_wrong_number_of_feature_tensors_is_rejected():
    reg = _build()
    with pytest.raises(ValueError, match="expects 2 feature tensors"):
        reg([torch.randn(2, 4)], torch.arange(2), [torch.randn(2, 4)], torch.arange(2))


# -- discriminators, Z, critic input, presets, ramp ------------------------------------


def _reference_shifted_nce(scores, positive, c, b):
    """Eq. 2.16 with h = e^s / (e^s + b), by hand."""
    pairs = [(s, p) for row, prow in zip(scores, positive, strict=True)
             for s, p in zip(row, prow, strict=True)]
    h = [(math.exp(s) / (math.exp(s) + b), p) for s, p in pairs]
    pos = [math.log(v) for v, p in h if p]
    neg = [math.log(1 - v) for v, p in h if not p]
    return -(sum(pos) / len(pos) + (c - 1) * sum(neg) / len(neg))


@pytest.mark.parametrize("b", [1.0, 9.0, 9.0 * 3.7])
def test_shifted_discriminator_matches_hand_computation(b):
    scores = [[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]
    positive = [[True, False, False], [False, True, True]]
    got = nce_loss(torch.tensor(scores, dtype=torch.float64), torch.tensor(positive), 10,
                   offset=math.log(b))
    assert got.item() == pytest.approx(_reference_shifted_nce(scores, positive, 10, b),
                                       rel=1e-12)
    bound = mi_lower_bound(torch.tensor(scores, dtype=torch.float64), torch.tensor(positive),
                           10, offset=math.log(b))
    expected = math.log(9) + sum(math.log(math.exp(s) / (math.exp(s) + b))
                                 for s in (0.5, 3.0, -0.25)) / 3
    assert bound.item() == pytest.approx(expected, rel=1e-12)


def test_shifted_discriminator_is_stable_at_extreme_scores():
    s = torch.tensor([[80.0, -80.0]], requires_grad=True)
    loss = nce_loss(s, torch.tensor([[True, False]]), 10, offset=torch.tensor(60.0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # h = sigmoid(20) on the positive, sigmoid(-140) on the negative: both near-perfect
    assert loss.item() == pytest.approx(-_logsig(20.0) - 9 * _logsig(140.0), rel=1e-6)


def _build10(**params):
    p = MIM4DD.Params.model_validate({"preset": "literal", **params})
    return MIM4DD(p, num_classes=10, feature_dims=[4, 6], registry=default_registry())


def _feats(m=20, n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    syn = [torch.randn(m, 4, generator=g, dtype=torch.float64),
           torch.randn(m, 6, generator=g, dtype=torch.float64)]
    real = [torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randn(n, 6, generator=g, dtype=torch.float64)]
    return syn, torch.arange(m) % 10, real, torch.arange(n) % 10


def test_crd_z_is_the_mean_of_exp_scores_at_the_first_call_and_stays_fixed():
    reg = _build10(discriminator="crd", critic={"name": "identity"}, normalize=False,
                   tau=1.0).double()
    syn, ys, real, yr = _feats()
    scores = reg.scores(syn, real)
    reg(syn, ys, real, yr)
    expected = [math.log(float(s.exp().mean())) for s in scores]
    assert reg.log_z.tolist() == pytest.approx(expected, rel=1e-12)
    # the second call uses the first call's Z, not its own
    syn2, _, real2, _ = _feats(seed=1)
    got = reg(syn2, ys, real2, yr)
    positive = (ys[:, None] == yr[None, :]).tolist()
    manual = 0.0
    for k, w in enumerate([1.0, 2.0]):
        s = (syn2[k] @ real2[k].T).tolist()
        manual += w * _reference_shifted_nce(s, positive, 10, 9 * math.exp(expected[k]))
    assert got.item() == pytest.approx(0.8 * manual, rel=1e-10)
    assert reg.log_z.tolist() == pytest.approx(expected, rel=1e-12)
    assert "log_z" in reg.state_dict()


def test_crd_z_tracked_is_a_moving_average():
    reg = _build10(discriminator="crd", z_mode="tracked", z_momentum=0.75,
                   critic={"name": "identity"}, normalize=False, tau=1.0).double()
    a, ys, ra, yr = _feats(seed=0)
    b, _, rb, _ = _feats(seed=1)
    reg(a, ys, ra, yr)
    reg(b, ys, rb, yr)
    for i, (sa, sb) in enumerate(zip(reg.scores(a, ra), reg.scores(b, rb), strict=True)):
        z = 0.75 * float(sa.exp().mean()) + 0.25 * float(sb.exp().mean())
        assert reg.log_z[i].item() == pytest.approx(math.log(z), rel=1e-10)


def test_crd_starts_near_log_c_plus_one_per_layer():
    # equal scores everywhere (an untrained critic's view): h = 1/C, so the layer loss is
    # log C + (C - 1) log(C / (C - 1)), about log(C - 1) + 1, whatever the score level
    s = torch.full((20, 30), 9.0, dtype=torch.float64)
    positive = (torch.arange(20) % 10)[:, None] == (torch.arange(30) % 10)[None, :]
    literal = nce_loss(s, positive, 10)
    crd = nce_loss(s, positive, 10, offset=math.log(9) + 9.0)
    assert crd.item() == pytest.approx(math.log(10) + 9 * math.log(10 / 9), rel=1e-12)
    assert literal.item() > 80  # the literal sigmoid is saturated: (C - 1) * 9 and more


def test_z_is_restored_from_the_state_dict():
    reg = _build10(discriminator="crd")
    syn, ys, real, yr = _feats()
    reg.double()(syn, ys, real, yr)
    other = _build10(discriminator="crd").double()
    other.load_state_dict(reg.state_dict())
    assert torch.equal(other.log_z, reg.log_z)


def test_prior_discriminator_offsets_by_log_c_minus_one():
    reg = _build10(discriminator="prior", critic={"name": "identity"}, normalize=False,
                   tau=1.0).double()
    syn, ys, real, yr = _feats()
    got = reg(syn, ys, real, yr)
    positive = (ys[:, None] == yr[None, :]).tolist()
    manual = sum(w * _reference_shifted_nce((syn[k] @ real[k].T).tolist(), positive, 10, 9.0)
                 for k, w in enumerate([1.0, 2.0]))
    assert got.item() == pytest.approx(0.8 * manual, rel=1e-10)


def test_channel_mean_critic_sees_per_channel_means():
    p = MIM4DD.Params.model_validate({"preset": "literal", "critic_input": "channel_mean",
                                      "critic": {"name": "linear", "out_dim": 5}})
    reg = MIM4DD(p, num_classes=3, feature_dims=[4 * 5 * 5, 6 * 2 * 2],
                 registry=default_registry(), feature_shapes=[(4, 5, 5), (6, 2, 2)])
    assert [c.fc.in_features for c in reg.critics] == [4, 6]
    syn = [torch.randn(3, 4, 5, 5), torch.randn(3, 6, 2, 2)]
    real = [torch.randn(7, 4, 5, 5), torch.randn(7, 6, 2, 2)]
    got = reg.scores(syn, real)
    for k, critic in enumerate(reg.critics):
        zs = F.normalize(critic(syn[k].mean((2, 3))), dim=1)
        zr = F.normalize(critic(real[k].mean((2, 3))), dim=1)
        assert torch.allclose(got[k], zs @ zr.T / 0.07, atol=1e-5)
    with pytest.raises(ValueError, match="feature shapes"):
        MIM4DD(p, num_classes=3, feature_dims=[4, 6], registry=default_registry())


@pytest.mark.parametrize("preset", ["critic_free", "stable"])
def test_pooled_critic_input_reads_the_real_view_as_the_features(preset):
    p = MIM4DD.Params.model_validate({"preset": preset})
    kw = dict(num_classes=3, feature_dims=[4 * 5 * 5, 6 * 2 * 2], registry=default_registry(),
              feature_shapes=[(4, 5, 5), (6, 2, 2)])
    torch.manual_seed(0)
    a, b = MIM4DD(p, **kw), MIM4DD(p, **kw)
    b.load_state_dict(a.state_dict())
    syn = [torch.randn(6, 4, 5, 5), torch.randn(6, 6, 2, 2)]
    real = [torch.randn(9, 4, 5, 5), torch.randn(9, 6, 2, 2)]
    ys, yr = torch.arange(6) % 3, torch.arange(9) % 3
    reduced = a.real_view()(real)
    assert [tuple(r.shape) for r in reduced] == [(9, 4), (9, 6)]
    torch.testing.assert_close(a(syn, ys, reduced, yr), b(syn, ys, real, yr))


def test_flattened_critic_input_reads_the_whole_features():
    p = MIM4DD.Params.model_validate({"preset": "literal"})
    reg = MIM4DD(p, num_classes=3, feature_dims=[4, 6], registry=default_registry())
    assert reg.real_view() is None


def test_literal_preset_is_todays_objective():
    p = MIM4DD.Params(preset="literal")
    assert (p.discriminator, p.critic_input, p.critic_steps, p.critic_warmup, p.ramp,
            p.rho, p.center, p.lam, p.critic.name, p.network_gradient) == (
        "sigmoid", "flatten", 0, 0, 0, None, False, 0.8, "linear", True)
    # the literal objective is the hand-computed Eq. 2.15-2.17 (see the identity test)
    test_identity_critic_total_matches_manual_sum()


def test_critic_free_is_the_default_preset():
    p = MIM4DD.Params()
    assert p == MIM4DD.Params(preset="critic_free")
    assert (p.preset, p.discriminator, p.critic.name, p.critic_input, p.center, p.rho,
            p.ramp, p.critic_steps, p.critic_warmup, p.synthetic_side, p.rho_window,
            p.rho_cap, p.network_gradient) == ("critic_free", "crd", "identity",
                                               "channel_mean", True, 1.0, 20, 0, 0,
                                               "class_mean", 9, 2.0, False)
    reg = MIM4DD(p, num_classes=3, feature_dims=[4, 6], registry=default_registry(),
                 feature_shapes=[(4, 2, 2), (6, 1, 1)])
    assert sum(t.numel() for t in reg.parameters()) == 0  # nothing to train


def test_explicit_lambda_weights_by_lambda_unless_rho_is_given():
    assert MIM4DD.Params.model_validate({"lambda": 0.5}).rho is None
    assert MIM4DD.Params.model_validate({"lambda": 0.0}).lam == 0.0
    both = MIM4DD.Params.model_validate({"lambda": 0.5, "rho": 0.3})
    assert (both.lam, both.rho) == (0.5, 0.3)
    assert MIM4DD.Params.model_validate({"preset": "stable", "lambda": 0.2}).rho is None
    assert MIM4DD.Params.model_validate({"preset": "stable"}).rho == 0.1


def test_stable_preset_and_explicit_overrides():
    p = MIM4DD.Params.model_validate({"preset": "stable"})
    assert (p.discriminator, p.critic_input, p.center, p.rho) == ("crd", "channel_mean", True,
                                                                  0.1)
    assert p.critic_warmup > 0 and p.critic_steps > 0 and p.ramp > 0
    q = MIM4DD.Params.model_validate({"preset": "stable", "rho": 0.3,
                                      "discriminator": "prior"})
    assert (q.rho, q.discriminator, q.critic_input) == (0.3, "prior", "channel_mean")
    with pytest.raises(ValidationError, match="preset"):
        MIM4DD.Params.model_validate({"preset": "best"})


def test_ramp_scales_lambda_from_zero():
    reg = _build(**{"lambda": 0.8, "ramp": 4, "critic": {"name": "identity"}})
    syn = [torch.randn(3, 4), torch.randn(3, 6)]
    real = [torch.randn(5, 4), torch.randn(5, 6)]
    ys, yr = torch.arange(3), torch.arange(5) % 3
    values = []
    for it in (0, 1, 2, 4, 9):
        reg.iteration = it
        values.append(reg(syn, ys, real, yr).item())
    full = values[-1]
    assert values[0] == 0.0
    assert values[1:4] == pytest.approx([full / 4, full / 2, full], rel=1e-6)


def test_rho_leaves_the_value_unweighted_and_reports_the_image_scale():
    reg = _build(**{"lambda": 0.8, "rho": 0.2, "ramp": 2, "critic": {"name": "identity"}})
    reg.iteration = 1
    assert reg.weight() == 1.0 and reg.image_scale() == pytest.approx(0.1)
    assert _build().image_scale() is None


def test_reference_norm_caps_this_norm_at_a_multiple_of_the_recent_median():
    norms = (4.0, 1.0, 100.0, 2.0, 3.0)
    # windows [4] [4 1] [4 1 100] [1 100 2] [100 2 3]: medians 4 1 4 2 3 (lower middle)
    at_median = _build(rho=1.0, rho_window=3, rho_cap=1.0, critic={"name": "identity"})
    assert [at_median.reference_norm(torch.tensor(n)).item() for n in norms] == [
        4.0, 1.0, 4.0, 2.0, 3.0]
    assert at_median.state_dict()["dd_norms"].tolist() == [100.0, 2.0, 3.0]  # resumes
    twice = _build(rho=1.0, rho_window=3, critic={"name": "identity"})  # rho_cap 2
    assert [twice.reference_norm(torch.tensor(n)).item() for n in norms] == [
        4.0, 1.0, 8.0, 2.0, 3.0]  # only the outlier is capped
    one = _build(rho=1.0, critic={"name": "identity"})  # rho_window 1: the norm itself
    assert one.reference_norm(torch.tensor(50.0)).item() == 50.0


def test_center_subtracts_the_real_mean_embedding_from_both_sides():
    reg = _build(center=True, critic={"name": "identity"}, normalize=False, tau=1.0)
    syn = [torch.randn(3, 4) + 5.0, torch.randn(3, 6)]
    real = [torch.randn(7, 4) + 5.0, torch.randn(7, 6)]
    got = reg.scores(syn, real)
    for k in range(2):
        mean = real[k].mean(0)
        assert torch.allclose(got[k], (syn[k] - mean) @ (real[k] - mean).T, atol=1e-5)
    # a shift shared by every feature no longer moves the scores
    shifted = reg.scores([f + 3.0 for f in syn], [f + 3.0 for f in real])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, shifted, strict=True))
    # after a linear critic: its bias (shared by every embedding) drops out too
    lin = _build(center=True, critic={"name": "linear", "out_dim": 5}, normalize=False,
                 tau=1.0)
    scores = lin.scores(syn, real)
    for k, critic in enumerate(lin.critics):
        zr, zs = critic(real[k]), critic(syn[k])
        mean = zr.mean(0)
        assert torch.allclose(scores[k], (zs - mean) @ (zr - mean).T, atol=1e-4)
        w = critic.fc.weight
        rm = real[k].mean(0)
        assert torch.allclose(scores[k], (syn[k] - rm) @ w.T @ (w @ (real[k] - rm).T),
                              atol=1e-4)


def test_class_mean_side_scores_each_class_mean_against_the_real_samples():
    torch.manual_seed(3)
    params = {"critic": {"name": "identity"}, "discriminator": "crd", "center": True,
              "normalize": True}
    reg = _build(**params, synthetic_side="class_mean")
    ref = _build(**params)
    syn = [torch.randn(6, 4), torch.randn(6, 6)]
    ys = torch.tensor([2, 0, 1, 0, 2, 1])
    real = [torch.randn(9, 4), torch.randn(9, 6)]
    yr = torch.arange(9) % 3
    means = [torch.stack([f[ys == c].mean(0) for c in range(3)]) for f in syn]
    got = reg(syn, ys, real, yr)
    expected = ref(means, torch.arange(3), real, yr)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # one image per class, in class order: the per-sample reading's value, bit for bit
    one = [f[[1, 2, 0]] for f in syn]
    y1 = torch.arange(3)
    a = _build(**params, synthetic_side="class_mean")(one, y1, real, yr)
    b = _build(**params)(one, y1, real, yr)
    assert torch.equal(a, b)
    # the gradient reaches every image of a class equally (through the mean)
    x = syn[1].clone().requires_grad_(True)
    _build(**params, synthetic_side="class_mean")([syn[0], x], ys, real, yr).backward()
    g = x.grad
    assert torch.allclose(g[1], g[3]) and torch.allclose(g[0], g[4])
