"""CAFE: alignment and discrimination terms, the persistent network, engine integration."""

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    MIM,
    assert_lambda_zero_is_exact,
    assert_loss_decreases,
    assert_resume_is_exact,
    inner_training_of_next_call,
)

from mim4dd_kit.engine import Run
from mim4dd_kit.losses.cafe import alignment_loss, discrimination_loss
from mim4dd_kit.registry import default_registry

CAFE = {"name": "cafe", "outer_loop": 3, "inner_loop": 2}



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
    out = r.loss.compute(r.syn, 0, want_features=True)
    assert torch.isfinite(out.loss) and {"cafe_align", "cafe_disc"} <= set(out.logs)
    m, n = len(r.syn.labels), 10 * 24
    assert len(out.syn_feats) == len(out.real_feats) == 2
    for f_s, f_r in zip(out.syn_feats, out.real_feats, strict=True):
        assert f_s.shape[0] == m and f_r.shape[0] == n and f_s.shape[1:] == f_r.shape[1:]
        assert f_s.requires_grad and not f_r.requires_grad
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    (out.loss + value).backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
    # the network is not trained by the distillation backward
    assert all(p.grad is None for p in r.loss.net.parameters())


def test_loss_decreases_over_engine_steps(recipe, tmp_path):
    r = make_run(recipe, tmp_path, augmentation=None,
                 dd_loss={"name": "cafe", "outer_loop": 1, "inner_loop": 0})
    # probe: outer_loop 1: a fresh network from the same seed each time
    assert_loss_decreases(r, steps=5, probe_seed=99)


def test_network_schedule_inner_training_and_reinit(recipe, tmp_path):
    r = make_run(recipe, tmp_path, augmentation=None)
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


def test_resume_restores_the_persistent_network(recipe, tmp_path):
    # checkpoint at iteration 4: call 4 trains the network made at call 3 (outer_loop 3)
    rec = recipe()
    assert_resume_is_exact(rec, tmp_path)
