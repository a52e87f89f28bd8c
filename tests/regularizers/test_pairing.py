"""Paired runs: with and without MIM4DD a run starts from the same images and draws the
same real batches and networks; only the regularizer's term differs."""

import pytest
import torch
from helpers import MIM, set_up_run


def _trace(recipe, tmp_path, steps: int = 4):
    r = set_up_run(recipe, tmp_path)
    init = r.syn.images.detach().clone()
    batches, nets = [], []
    sample, make = r.data.sample_per_class, r.ctx.make_backbone

    def spy_sample(n, generator=None):
        out = sample(n, generator)
        batches.append(out[0].clone())
        return out

    def spy_make():
        net = make()
        nets.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone())
        return net

    r.data.sample_per_class, r.ctx.make_backbone = spy_sample, spy_make
    for it in range(steps):
        r.step(it)
    return init, batches, nets, r.syn.images.detach()


@pytest.mark.parametrize("loss", ["dm", "dsa"])
def test_base_and_mim4dd_share_initial_images_batches_and_networks(tiny_recipe, tmp_path,
                                                                  loss):
    base = _trace(tiny_recipe(dd_loss={"name": loss}), tmp_path / "base")
    mim = _trace(tiny_recipe(dd_loss={"name": loss}, regularizer=MIM), tmp_path / "mim")
    assert torch.equal(base[0], mim[0])
    assert len(base[1]) == len(mim[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(base[1], mim[1], strict=True))
    assert len(base[2]) == len(mim[2]) > 0
    assert all(torch.equal(a, b) for a, b in zip(base[2], mim[2], strict=True))
    assert not torch.equal(base[3], mim[3])  # the regularizer did change the images


def test_dm_hands_the_regularizer_its_reduced_real_features(tiny_recipe, tmp_path,
                                                            monkeypatch):
    """With a pooled critic input DM takes each chunk's per-channel means instead of the
    whole real features; the run takes the same steps as with the whole features."""
    from mim4dd_kit.regularizers.mim4dd import MIM4DD

    recipe = tiny_recipe(dd_loss={"name": "dm"},
                         regularizer={"name": "mim4dd", "preset": "critic_free"})
    seen = []
    forward = MIM4DD.forward

    def spy(self, syn_feats, syn_labels, real_feats, real_labels):
        seen.append([tuple(f.shape) for f in real_feats])
        return forward(self, syn_feats, syn_labels, real_feats, real_labels)

    monkeypatch.setattr(MIM4DD, "forward", spy)
    viewed = _trace(recipe, tmp_path / "viewed", steps=3)[3]
    assert seen and all(len(s) == 2 for shapes in seen for s in shapes)  # (N, C) each
    monkeypatch.setattr(MIM4DD, "real_view", lambda self: None)
    seen.clear()
    whole = _trace(recipe, tmp_path / "whole", steps=3)[3]
    assert seen and all(len(s) == 4 for shapes in seen for s in shapes)  # (N, C, H, W)
    torch.testing.assert_close(viewed, whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tap,viewed", [("output", True), ("pre_pool", False)])
def test_the_real_view_is_offered_only_at_the_block_outputs(tiny_recipe, tmp_path, tap,
                                                           viewed):
    """At another tap the loss makes a tapped pass of the real batch; the view (which DM
    takes inside its own block-output pass) must not apply there."""
    r = set_up_run(tiny_recipe(dd_loss={"name": "dm"}, regularizer={
        "name": "mim4dd", "preset": "critic_free", "tap": tap}), tmp_path)
    assert (r.ctx.real_view is not None) is viewed
    r.step(0)  # either way the step runs


def test_network_gradient_changes_nothing_where_the_network_is_not_trained_on_the_set(
        tiny_recipe, tmp_path):
    """DM samples its network independently of the synthetic set: taking it 'as given'
    is what it always does, so the run's images are the same to the bit."""
    reg = {"name": "mim4dd", "preset": "critic_free"}
    through = _trace(tiny_recipe(dd_loss={"name": "dm"}, regularizer=reg), tmp_path / "a",
                     steps=3)[3]
    given = _trace(tiny_recipe(dd_loss={"name": "dm"},
                               regularizer={**reg, "network_gradient": False}),
                   tmp_path / "b", steps=3)[3]
    assert torch.equal(through, given)
