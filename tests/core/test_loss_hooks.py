"""The engine's optional DDLoss hooks (image_steps, init_images, after_step) and the
decoded view of a multi-formation set that every loss receives."""

import pytest
import torch
from helpers import set_up_run

from mim4dd_kit.dd_losses.dm import DistributionMatching


def test_image_steps_after_step_and_milestones(tiny_recipe, tmp_path, monkeypatch):
    calls = {"init": 0, "after": 0}

    def init_images(self, syn):
        calls["init"] += 1
        syn.images.zero_()

    def after_step(self, syn):
        calls["after"] += 1
        assert not torch.is_grad_enabled()

    monkeypatch.setattr(DistributionMatching, "image_steps", 3, raising=False)
    monkeypatch.setattr(DistributionMatching, "init_images", init_images, raising=False)
    monkeypatch.setattr(DistributionMatching, "after_step", after_step, raising=False)
    r = set_up_run(tiny_recipe(synthetic={"schedule": {"milestones": [2], "gamma": 0.1}}),
                   tmp_path)
    assert calls["init"] == 1 and torch.count_nonzero(r.syn.images) == 0
    steps = []
    step = r.step
    r.step = lambda it: (steps.append(it), step(it))[1]
    lrs = []
    for it in range(3):
        logs = r.iterate(it)
        lrs.append(r.opt_img.param_groups[0]["lr"])
        assert set(logs) >= {"loss_dd", "loss"}
    assert steps == [0, 0, 0, 1, 1, 1, 2, 2, 2] and calls["after"] == 9
    # the milestone counts iterations: the lr drops after iteration 2, not after step 2
    assert lrs[0] == 1.0 and lrs[1:] == [pytest.approx(0.1)] * 2


def test_without_hooks_an_iteration_is_one_step(tiny_recipe, tmp_path):
    r = set_up_run(tiny_recipe(), tmp_path)
    assert r.image_steps == 1
    torch.manual_seed(3)
    a = r.iterate(0)
    r2 = set_up_run(tiny_recipe(), tmp_path / "b")
    torch.manual_seed(3)
    b = r2.step(0)
    assert a == b and torch.equal(r.syn.images, r2.syn.images)


def test_every_loss_sees_the_decoded_set(tiny_recipe, tmp_path):
    seen = []
    r = set_up_run(tiny_recipe(synthetic={"ipc": 2, "formation": 2}), tmp_path)
    compute = r.loss.compute
    r.loss.compute = lambda syn, *a: (seen.append((syn.images.shape, syn.labels)),
                                      compute(syn, *a))[1]
    r.step(0)
    shape, labels = seen[0]
    assert r.syn.images.shape == (20, 1, 8, 8) and shape == (80, 1, 8, 8)
    assert torch.equal(labels, torch.arange(10).repeat_interleave(8))
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
