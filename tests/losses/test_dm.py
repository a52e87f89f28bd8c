"""DM: the batched loss equals the per-class formulation of the same maths."""

import torch

from mim4dd_kit.api import SyntheticState
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.run.engine import Run


def test_batched_dm_equals_per_class_loop(tiny_recipe, tmp_path):
    r = Run(tiny_recipe(augmentation=None), tmp_path, torch.device("cpu"), default_registry())
    r.setup()
    ctx = r.ctx
    torch.manual_seed(3)
    out = r.loss.compute(r.syn, 0, want_features=True)
    # replay the same draws: the network, then the real batch
    torch.manual_seed(3)
    net = ctx.make_backbone()
    real, real_y = ctx.data.sample_per_class(ctx.batch_real)
    expected = 0.0
    for c in range(ctx.data.info.num_classes):
        er = net.embed(real[real_y == c]).detach()
        es = net.embed(r.syn.images[r.syn.labels == c])
        expected = expected + ((er.mean(0) - es.mean(0)) ** 2).sum()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert len(out.syn_feats) == 2 and out.syn_feats[0].shape[0] == len(r.syn.labels)
    assert out.real_feats[0].shape[0] == len(real_y) and not out.real_feats[0].requires_grad
    # the handed-out features are the replayed network's block outputs on the same batches
    for got, want in zip(out.syn_feats, net.features(r.syn.images), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(out.real_feats, net.features(real), strict=True):
        torch.testing.assert_close(got, want)


def test_dm_gradient_reaches_images(tiny_recipe, tmp_path):
    r = Run(tiny_recipe(), tmp_path, torch.device("cpu"), default_registry())
    r.setup()
    syn = SyntheticState(r.syn.images, r.syn.labels)
    r.loss.compute(syn, 0, want_features=False).loss.backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
