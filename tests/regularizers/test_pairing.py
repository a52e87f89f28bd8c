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
