"""DREAM (the reference's IDC-based loop): per-class image steps in pixel space, conv-only
gradient distance, network trained on real data, k-means schedule, multi-formation."""

import pytest
import torch
import torch.nn.functional as F
from helpers import MIM, assert_lambda_zero_is_exact, assert_resume_is_exact, distilled, set_up_run

from mim4dd_kit.dd_losses.dream import DREAM, conv_distance, metric_for, tile_encode
from mim4dd_kit.io import formation

LOSS = {"name": "dream", "inner_loop": 2, "interval": 1, "kmeans_iters": 5, "net_data": 16,
        "clusters": 4}
SMALL = {"ipc": 1, "batch_real": 8, "formation": 2, "lr": 0.01, "iterations": 3}


def make_run(tiny_recipe, tmp_path, loss=None, synthetic=None, **changes):
    return set_up_run(tiny_recipe(dd_loss={**LOSS, **(loss or {})},
                                  synthetic={**SMALL, **(synthetic or {})}, **changes), tmp_path)


def test_conv_distance_skips_biases_norms_and_the_classifier():
    g_real = [torch.zeros(2, 3, 1, 2, 2), torch.zeros(2, 3), torch.zeros(2, 4, 5)]
    g_syn = [torch.ones(2, 3, 1, 2, 2), torch.full((2, 3), 2.0), torch.full((2, 4, 5), 3.0)]
    g_syn[0][1] *= -2.0
    assert conv_distance(g_real, g_syn, "mse").tolist() == [12.0, 48.0]
    assert conv_distance(g_real, g_syn, "l1").tolist() == [12.0, 24.0]
    assert conv_distance(g_real, g_syn, "l1", bias=True).tolist() == [18.0, 30.0]
    assert conv_distance(g_real, g_syn, "mse", fc=True).tolist() == [12.0 + 180, 48.0 + 180]


def test_metric_follows_the_data_set_and_params_are_the_reference_defaults():
    assert metric_for("fashion_mnist", "auto") == "l1" and metric_for("mnist", "auto") == "l1"
    assert metric_for("cifar10", "auto") == "mse" and metric_for("cifar10", "l1") == "l1"
    p = DREAM.Params()
    assert (p.inner_loop, p.interval, p.kmeans_iters, p.batch_syn_max) == (100, 10, 100, 128)
    assert (p.net_lr, p.net_momentum, p.net_weight_decay, p.net_data) == (0.01, 0.9, 5e-4, 500)
    assert (p.mix_p, p.init, p.clamp, p.pixel_step) == (0.5, "kmeans", True, True)
    assert not DREAM.learns_lr and not DREAM.shardable


def test_tile_encode_places_shrunk_images_row_major():
    imgs = torch.arange(4.0)[:, None, None, None, None].expand(4, 1, 1, 4, 4)
    out = tile_encode(imgs, 2)
    assert out[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    odd = tile_encode(torch.arange(4.0)[:, None, None, None, None].expand(4, 1, 1, 5, 5), 2)
    assert odd[0, 0, :, 0].tolist() == [0, 0, 0, 2, 2]  # first row of tiles is 3 high


def test_kmeans_init_tiles_class_representatives_and_clamps(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, synthetic={"ipc": 2})
    loss, data = r.loss, r.data
    stored = r.syn.images.detach()
    assert stored.shape == (20, 1, 8, 8)
    assert (stored >= loss.lo - 1e-6).all() and (stored <= loss.hi + 1e-6).all()
    # every 4x4 tile is a nearest-resized training image of the stored image's class
    small = F.interpolate(data.train_images, size=(4, 4))
    tiles = stored.reshape(20, 1, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(80, 1, 4, 4)
    dist = (tiles.flatten(1)[:, None] - small.flatten(1)[None]).abs().amax(-1)  # (80, N)
    best = dist.min(1)
    assert best.values.max() < 1e-6
    assert torch.equal(data.train_labels[best.indices], r.syn.labels.repeat_interleave(4))
    assert len(set(best.indices.tolist())) == 80  # distinct representatives


def test_one_iteration_equals_a_plain_per_class_pixel_space_loop(tiny_recipe, tmp_path):
    """The engine's iteration against a transcription of the reference's inner iteration:
    images in [0, 1], per-class decode, normalise, autograd gradients, MSE over conv
    weights, one SGD(momentum) step per class over the whole tensor."""
    r = make_run(tiny_recipe, tmp_path, augmentation=None,
                 loss={"augment": False, "metric": "mse", "net_data": 0, "init": "engine"},
                 synthetic={"ipc": 2, "momentum": 0.5, "lr": 0.05})
    loss = r.loss
    m, s = loss.mean, loss.std
    pixels = (r.syn.images.detach() * s + m).clone().requires_grad_(True)
    r.iterate(0)
    net, sel = loss.net, loss.selection
    opt = torch.optim.SGD([pixels], lr=0.05, momentum=0.5)
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    for c in range(10):
        rows = (r.syn.labels == c).nonzero().squeeze(1)
        dec, dec_y = formation.decode(pixels[rows], r.syn.labels[rows], 2, pad=0.5)
        real = r.data.train_images[sel[c]]
        g_real = torch.autograd.grad(F.cross_entropy(net(real), torch.full((len(real),), c)),
                                     params)
        g_syn = torch.autograd.grad(F.cross_entropy(net((dec - m) / s), dec_y), params,
                                    create_graph=True)
        dist = sum(((a - b) ** 2).sum() for a, b in zip(g_real, g_syn, strict=True)
                   if a.dim() == 4)
        opt.zero_grad()
        dist.backward()
        opt.step()
    torch.testing.assert_close(r.syn.images.detach() * s + m, pixels.detach(),
                               rtol=1e-4, atol=1e-5)


def test_each_step_moves_only_its_class_without_momentum(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, synthetic={"momentum": 0.0})
    before = r.syn.images.detach().clone()
    r.step(0)  # one engine step = the step of class 0
    moved = (r.syn.images.detach() != before).flatten(1).any(1)
    assert moved.tolist() == [True] + [False] * 9


def test_pixel_step_scales_the_image_gradient_by_one_over_std_squared(tiny_recipe, tmp_path):
    grads = []
    for flag in (True, False):
        r = make_run(tiny_recipe, tmp_path / str(flag), loss={"pixel_step": flag})
        torch.manual_seed(5)
        r.loss.compute(r.loss_view(), 0, False).loss.backward()
        grads.append(r.syn.images.grad.clone())
    std = r.data.info.std[0]
    torch.testing.assert_close(grads[0], grads[1] / std**2, rtol=1e-4, atol=1e-7)


def test_schedule_new_network_training_refresh_and_clamp(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, loss={"inner_loop": 3, "interval": 2, "net_data": 20},
                 synthetic={"batch_real": 8})
    loss = r.loss
    nets, refresh, net_steps = [], [], []
    for it in range(6):
        with torch.no_grad():
            r.syn.images.fill_(5.0)  # far outside [0, 1]: shows when a clamp happens
        net = loss.net
        opt_step = loss.opt.step
        counted = []
        loss.opt.step = lambda *a, _c=counted, _s=opt_step, **k: (_c.append(1), _s(*a, **k))[1]
        logs = r.iterate(it)
        loss.opt.step = opt_step
        nets.append(loss.net is net)
        refresh.append(logs["dream_refresh"])
        net_steps.append(len(counted))
        clamped = bool((r.syn.images <= loss.hi + 1e-6).all())
        assert clamped == ((it + 1) % 3 == 0)
    # a new network every 3 iterations; in between 3 SGD steps (8 + 8 + 8 >= 20 images)
    assert nets == [True, True, True, False, True, True]
    assert net_steps == [0, 3, 3, 0, 3, 3]
    assert refresh == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert r.loss.calls == 60 and r.image_steps == 10


def test_features_for_mim4dd_come_from_decoded_images_and_every_classes_batch(
        tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, regularizer=MIM, synthetic={"ipc": 2})
    out = r.loss.compute(r.loss_view(), 0, want_features=True)
    assert out.syn_labels.tolist() == [0] * 8  # class 0's 2 stored images decode to 8
    assert out.real_labels.tolist() == [c for c in range(10) for _ in range(4)]
    for f_s, f_r in zip(out.syn_feats, out.real_feats, strict=True):
        assert f_s.shape[0] == 8 and f_r.shape[0] == 40 and f_s.shape[1:] == f_r.shape[1:]
        assert f_s.requires_grad and not f_r.requires_grad
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    value.backward()
    assert r.syn.images.grad[:2].abs().sum() > 0 and r.syn.images.grad[2:].abs().sum() == 0


def test_lambda_zero_reproduces_dream_exactly(tiny_recipe, tmp_path):
    kw = {"dd_loss": LOSS, "synthetic": SMALL}
    base = assert_lambda_zero_is_exact(lambda reg: tiny_recipe(**kw, regularizer=reg),
                                       tmp_path)
    assert base.formation == 2 and base.images.shape == (10, 1, 8, 8)
    assert base.decoded()[0].shape == (40, 1, 8, 8)


def test_resume_restores_network_selection_and_counter(tiny_recipe, tmp_path):
    rec = tiny_recipe(dd_loss={**LOSS, "inner_loop": 3, "interval": 2},
                      synthetic={**SMALL, "iterations": 6})
    assert_resume_is_exact(rec, tmp_path, stop_after=4)


def test_needs_an_augmentation_unless_switched_off(tiny_recipe, tmp_path):
    with pytest.raises(Exception, match="augment"):
        make_run(tiny_recipe, tmp_path, augmentation=None)
    r = make_run(tiny_recipe, tmp_path / "b", augmentation=None, loss={"augment": False})
    out = distilled(tiny_recipe(dd_loss={**LOSS, "augment": False}, synthetic=SMALL,
                                augmentation=None), tmp_path / "c")
    assert r.loss.metric == "mse" and out.metadata["formation"] == {"factor": 2}
