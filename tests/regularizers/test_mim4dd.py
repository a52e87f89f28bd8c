"""MIM4DD regularizer against values computed by hand (SPEC section 2)."""

import math

import pytest
import torch
from pydantic import ValidationError

from mim4dd_kit.registry import default_registry
from mim4dd_kit.regularizers.mim4dd import MIM4DD, layer_weights, mi_lower_bound, nce_loss


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
    p = MIM4DD.Params.model_validate(params)
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
