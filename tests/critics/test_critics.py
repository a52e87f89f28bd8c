"""Critic heads: identity, one fc layer, two fc layers."""

import pytest
import torch

from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.critics.identity import IdentityCritic
from mim4dd_kit.critics.linear import LinearCritic
from mim4dd_kit.critics.mlp import MLPCritic


def _by_hand(critic, x):
    """The critic's map written out from its weights: fc layers with a ReLU between them."""
    fcs = [m for m in critic.modules() if isinstance(m, torch.nn.Linear)]
    for k, fc in enumerate(fcs):
        x = x @ fc.weight.T + (0.0 if fc.bias is None else fc.bias)
        if k < len(fcs) - 1:
            x = x.clamp(min=0)
    return x


def test_identity_returns_its_input_and_has_no_parameters():
    critic = IdentityCritic(IdentityCritic.Params(), in_features=12)
    x = torch.randn(4, 12)
    assert critic(x) is x
    assert critic.out_dim == 12
    assert list(critic.parameters()) == []


@pytest.mark.parametrize(
    "critic",
    [
        LinearCritic(LinearCritic.Params(out_dim=6), in_features=10),
        LinearCritic(LinearCritic.Params(out_dim=6, bias=False), in_features=10),
        MLPCritic(MLPCritic.Params(hidden=16, out_dim=6), in_features=10),
    ],
    ids=["linear", "linear-nobias", "mlp"],
)
def test_trainable_critics_shape_and_gradients(critic):
    torch.manual_seed(0)
    x = torch.randn(4, 10, requires_grad=True)
    out = critic(x)
    assert out.shape == (4, 6) and critic.out_dim == 6
    torch.testing.assert_close(out, _by_hand(critic, x))
    out.square().sum().backward()
    params = list(critic.parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_parameter_counts_and_defaults():
    linear = LinearCritic(LinearCritic.Params(), in_features=20)
    assert linear.out_dim == 128
    assert sum(p.numel() for p in linear.parameters()) == 20 * 128 + 128
    no_bias = LinearCritic(LinearCritic.Params(bias=False), in_features=20)
    assert sum(p.numel() for p in no_bias.parameters()) == 20 * 128
    mlp = MLPCritic(MLPCritic.Params(), in_features=20)
    assert mlp.out_dim == 128
    assert sum(p.numel() for p in mlp.parameters()) == (20 * 256 + 256) + (256 * 128 + 128)


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (LinearCritic, {"out_dim": 0}),
        (LinearCritic, {"out_dim": -3}),
        (LinearCritic, {"out_dims": 3}),
        (MLPCritic, {"out_dim": 0}),
        (MLPCritic, {"hidden": 0}),
        (MLPCritic, {"depth": 2}),
        (IdentityCritic, {"out_dim": 8}),
    ],
)
def test_params_reject_bad_values(cls, bad):
    with pytest.raises(ValueError):
        cls.Params(**bad)


def test_registry_builds_each_critic():
    registry = default_registry()
    for name, expected in (("identity", 7), ("linear", 5), ("mlp", 5)):
        ref = {"name": name} if name == "identity" else {"name": name, "out_dim": 5}
        critic = registry.build("critics", ref, in_features=7)
        assert critic.out_dim == expected
        x = torch.randn(3, 7)
        out = critic(x)
        assert out.shape == (3, expected)
        torch.testing.assert_close(out, _by_hand(critic, x))  # identity: no fc layer, x itself
