"""DC / DSA: distances, vectorised gradients vs a per-class loop, network schedule, engine."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    MIM,
    assert_lambda_zero_is_exact,
    assert_loss_decreases,
    assert_resume_is_exact,
    inner_training_of_next_call,
    set_up_run,
)

from mim4dd_kit.core.errors import PluginError
from mim4dd_kit.dd_losses import dc as dc_module
from mim4dd_kit.dd_losses.dc import DatasetCondensation, DifferentiableSiameseAugmentation
from mim4dd_kit.dd_losses.gradient_matching import (
    class_chunk,
    class_gradients,
    get_loops,
    match_distance,
)
from mim4dd_kit.run.engine import Run

SMALL = {"ipc": 2, "batch_real": 8}  # 20 synthetic images, 80 real per call



def make_run(tiny_recipe, tmp_path, **changes) -> Run:
    changes.setdefault("synthetic", SMALL)
    return set_up_run(tiny_recipe(**changes), tmp_path)


# --------------------------------------------------------------- a plain reference loop


def reference_distance(gr: list, gs: list, kind: str):
    """The reference match_loss / distance_wb, written per parameter tensor."""
    if kind == "ours":
        total = 0.0
        for r, s in zip(gr, gs, strict=True):
            if r.dim() == 1:
                continue
            r2, s2 = r.reshape(r.shape[0], -1), s.reshape(s.shape[0], -1)
            cos = (r2 * s2).sum(-1) / (r2.norm(dim=-1) * s2.norm(dim=-1) + 1e-6)
            total = total + (1 - cos).sum()
        return total
    vr = torch.cat([r.reshape(-1) for r in gr])
    vs = torch.cat([s.reshape(-1) for s in gs])
    if kind == "mse":
        return ((vs - vr) ** 2).sum()
    return 1 - (vr * vs).sum() / (vr.norm() * vs.norm() + 1e-6)


def loop_loss(net, real, real_y, syn, syn_y, num_classes, kind):
    """Per class: one backward per side, as the reference main.py does."""
    net = copy.deepcopy(net).requires_grad_(True)
    params = list(net.parameters())
    total = 0.0
    for c in range(num_classes):
        xr, yr = real[real_y == c], real_y[real_y == c]
        xs, ys = syn[syn_y == c], syn_y[syn_y == c]
        gr = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(xr), yr), params)]
        gs = torch.autograd.grad(F.cross_entropy(net(xs), ys), params, create_graph=True)
        total = total + reference_distance(gr, list(gs), kind)
    return total


# ----------------------------------------------------------------------- distances


def test_ours_distance_by_hand_and_ignores_1d_parameters():
    conv_r = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 1, 1, 2)
    conv_s = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).reshape(2, 1, 1, 2)
    fc_r, fc_s = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    bias_r, bias_s = torch.tensor([1.0, -1.0]), torch.tensor([-5.0, 7.0])
    gr = [t[None] for t in (conv_r, bias_r, fc_r)]  # one "class"
    gs = [t[None] for t in (conv_s, bias_s, fc_s)]
    # rows: (1,0)/(0,1) -> 1 - 0; (1,1)/(2,2) -> 1 - 4/(4 + eps); fc -> 1 - 24/(25 + eps)
    expected = 1.0 + (1 - 4 / (4 + 1e-6)) + (1 - 24 / (25 + 1e-6))
    got = match_distance(gr, gs, "ours")
    assert got.shape == (1,)
    torch.testing.assert_close(got, torch.tensor([expected]), rtol=1e-6, atol=1e-7)
    moved = [gs[0], torch.tensor([[100.0, -3.0]]), gs[2]]  # only the bias gradient changes
    assert torch.equal(match_distance(gr, moved, "ours"), got)
    assert not torch.equal(match_distance(gr, moved, "mse"), match_distance(gr, gs, "mse"))
    # mse and cos over the concatenated vectors, bias included
    vr = torch.tensor([1.0, 0, 1, 1, 1, -1, 3, 4])
    vs = torch.tensor([0.0, 1, 2, 2, -5, 7, 4, 3])
    torch.testing.assert_close(match_distance(gr, gs, "mse"), ((vr - vs) ** 2).sum()[None])
    cos = float(vr @ vs) / (float(vr.norm()) * float(vs.norm()) + 1e-6)
    torch.testing.assert_close(match_distance(gr, gs, "cos"), torch.tensor([1 - cos]))


def test_distances_are_per_class_and_reject_unknown_names():
    torch.manual_seed(0)
    gr = [torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4), torch.randn(3, 5, 6)]
    gs = [torch.randn_like(g) for g in gr]
    for kind in ("ours", "mse", "cos"):
        batched = match_distance(gr, gs, kind)
        each = [reference_distance([g[c] for g in gr], [g[c] for g in gs], kind)
                for c in range(3)]
        torch.testing.assert_close(batched, torch.stack(each), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown gradient distance"):
        match_distance(gr, gs, "l1")


def test_get_loops_reference_table_and_nearest_entry():
    assert get_loops(1) == (1, 1) and get_loops(10) == (10, 50) and get_loops(50) == (50, 10)
    assert get_loops(20) == (20, 25) and get_loops(30) == (30, 20) and get_loops(40) == (40, 15)
    assert get_loops(3) == (1, 1) and get_loops(8) == (10, 50) and get_loops(200) == (50, 10)
    assert get_loops(15) == (20, 25)  # a tie goes to the larger IPC


# ------------------------------------------------------- vectorised == per-class loop


@pytest.mark.parametrize("distance", ["ours", "mse", "cos"])
def test_vectorised_loss_and_image_gradient_equal_the_loop(tiny_recipe, tmp_path, distance):
    r = make_run(tiny_recipe, tmp_path, augmentation=None,
                 dd_loss={"name": "dc", "distance": distance})
    ctx, c = r.ctx, r.data.info.num_classes
    torch.manual_seed(3)
    out = r.loss.compute(r.syn, 0, want_features=False)
    (g_vec,) = torch.autograd.grad(out.loss, r.syn.images)
    # replay the draws of call 0: the new network, then the real batch
    torch.manual_seed(3)
    net = ctx.make_backbone()
    real, real_y = ctx.data.sample_per_class(ctx.batch_real)
    expected = loop_loss(net, real, real_y, r.syn.images, r.syn.labels, c, distance)
    (g_loop,) = torch.autograd.grad(expected, r.syn.images)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_vec, g_loop, rtol=1e-4, atol=1e-7)


def test_batchnorm_backbone_freezes_statistics_and_matches_the_loop(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, augmentation=None, dd_loss={"name": "dc"},
                 backbone={"name": "convnet", "width": 8, "depth": 2, "norm": "batch"})
    ctx, c = r.ctx, r.data.info.num_classes
    torch.manual_seed(4)
    out = r.loss.compute(r.syn, 0, want_features=False)
    bns = [m for m in r.loss.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)  # frozen for the matching
    assert all(int(m.num_batches_tracked) == 1 for m in bns)  # set by one real batch
    torch.manual_seed(4)
    net = ctx.make_backbone()
    bn_real, _ = ctx.data.sample_per_class(16)
    with torch.no_grad():
        net(bn_real)
    net.eval()
    real, real_y = ctx.data.sample_per_class(ctx.batch_real)
    expected = loop_loss(net, real, real_y, r.syn.images, r.syn.labels, c, "ours")
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_class_gradients_without_graph_for_real_data():
    from mim4dd_kit.backbones.convnet import ConvNet

    torch.manual_seed(0)
    net = ConvNet(ConvNet.Params(width=4, depth=1), channels=1, num_classes=2,
                  image_size=(4, 4)).requires_grad_(False)
    x = torch.randn(2, 3, 1, 4, 4)
    y = torch.tensor([[0, 0, 0], [1, 1, 1]])
    grads, feats = class_gradients(net, x, y)
    assert [g.shape[1:] for g in grads] == [p.shape for p in net.parameters()]
    assert all(g.shape[0] == 2 and not g.requires_grad for g in grads)
    assert feats[0].shape == (2, 3, 4, 4, 4) and not feats[0].requires_grad
    # the slow formulation: one ordinary backward pass per class
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    for c in range(2):
        logits = torch.func.functional_call(
            net, dict(zip((k for k, _ in net.named_parameters()), params, strict=True)),
            (x[c],))
        want = torch.autograd.grad(F.cross_entropy(logits, y[c]), params)
        for g, w in zip(grads, want, strict=True):
            torch.testing.assert_close(g[c], w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(feats[0][c], net.features(x[c])[0])


def test_real_gradients_in_class_groups_are_bit_identical_to_all_at_once():
    from mim4dd_kit.backbones.convnet import ConvNet

    torch.manual_seed(0)
    net = ConvNet(ConvNet.Params(width=8, depth=2, norm="instance"), channels=1,
                  num_classes=4, image_size=(8, 8)).requires_grad_(False)
    x, y = torch.randn(4, 5, 1, 8, 8), torch.arange(4)[:, None].expand(4, 5).contiguous()
    with torch.no_grad():
        g_all, f_all = class_gradients(net, x, y)
        for chunk in (1, 3):
            g, f = class_gradients(net, x, y, chunk=chunk)
            assert all(torch.equal(a, b) for a, b in zip(g, g_all, strict=True))
            assert all(torch.equal(a, b) for a, b in zip(f, f_all, strict=True))


def test_class_chunk_keeps_a_group_within_the_cpu_budget():
    from mim4dd_kit.backbones.convnet import ConvNet

    net = ConvNet(ConvNet.Params(width=64, depth=3, norm="instance"), channels=1,
                  num_classes=10, image_size=(28, 28))
    # the dsa IPC 1 side-by-side setting: 64 real images per class, width 64; one class's
    # pre-pooling activation is 64 x 64 x 32 x 32 floats = 16 MiB, all ten 160 MiB
    real = torch.empty(10, 64, 1, 28, 28)
    assert class_chunk(net, real) == 1
    assert class_chunk(net, real, budget=3 * 2**24) == 3
    assert class_chunk(net, real, budget=10 * 2**24) is None  # all fit: one call
    assert class_chunk(net, torch.empty(10, 64, 1, 28, 28, device="meta")) is None  # off CPU
    assert class_chunk(net, torch.empty(10, 4, 1, 28, 28)) is None  # small batches


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_loss_is_bit_identical_with_the_real_side_in_class_groups(
        tiny_recipe, tmp_path, monkeypatch, name):
    losses, grads = [], []
    for chunk in (None, 1):
        monkeypatch.setattr(dc_module, "class_chunk", lambda net, x, c=chunk: c)
        r = make_run(tiny_recipe, tmp_path / str(chunk), dd_loss={"name": name})
        torch.manual_seed(5)
        out = r.loss.compute(r.syn, 0, want_features=False)
        losses.append(out.loss.detach())
        grads.append(torch.autograd.grad(out.loss, r.syn.images)[0])
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


# ------------------------------------------------------------------ plugin behaviour


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_gradients_reach_images_and_features_for_mim4dd(tiny_recipe, tmp_path, name):
    r = make_run(tiny_recipe, tmp_path, regularizer=MIM, dd_loss={"name": name})
    out = r.loss.compute(r.syn, 0, want_features=True)
    assert torch.isfinite(out.loss)
    m, n = len(r.syn.labels), 10 * 8
    assert len(out.syn_feats) == len(out.real_feats) == 2
    for f_s, f_r in zip(out.syn_feats, out.real_feats, strict=True):
        assert f_s.shape[0] == m and f_r.shape[0] == n and f_s.shape[1:] == f_r.shape[1:]
        assert f_s.requires_grad and not f_r.requires_grad
    assert torch.equal(out.syn_labels, r.syn.labels)  # the engine's set is class-grouped
    assert torch.equal(out.real_labels, torch.arange(10).repeat_interleave(8))
    if name == "dc":  # no augmentation: the matched network's blocks on the set itself
        with torch.no_grad():
            want = r.loss.net.features(r.syn.images)
        for got, w in zip(out.syn_feats, want, strict=True):
            torch.testing.assert_close(got.detach(), w, rtol=1e-5, atol=1e-6)
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    (out.loss + value).backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0
    assert all(p.grad is None for p in r.loss.net.parameters())


def test_features_are_the_gradient_forward_of_the_synthetic_images(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, augmentation=None, regularizer=MIM,
                 dd_loss={"name": "dc"})
    out = r.loss.compute(r.syn, 0, want_features=True)
    direct = r.loss.net.features(r.syn.images)
    for a, b in zip(out.syn_feats, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_loss_decreases_over_engine_steps(tiny_recipe, tmp_path, name):
    r = make_run(tiny_recipe, tmp_path, dd_loss={"name": name, "outer_loop": 1},
                 synthetic={**SMALL, "lr": 0.1})
    # probe: outer_loop 1: the same fresh network, batch and draws each time
    assert_loss_decreases(r, steps=6, probe_seed=99)


def test_network_schedule_trains_epochs_and_reinitialises(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, augmentation=None,
                 dd_loss={"name": "dc", "outer_loop": 3, "inner_loop": 2, "batch_train": 8})
    loss = r.loss
    loss.compute(r.syn, 0, False)
    first = loss.net
    same, steps, changed = inner_training_of_next_call(loss, r.syn, 1)
    # 2 epochs over 20 images in batches of 8 (8, 8, 4): 6 SGD steps
    assert same and steps == 6 and changed
    assert all(not p.requires_grad for p in first.parameters())
    loss.compute(r.syn, 2, False)
    loss.compute(r.syn, 3, False)  # call 3 = outer_loop: a new network
    assert loss.net is not first and loss.state_dict()["calls"] == 4


def test_default_loops_come_from_the_ipc(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, synthetic={"ipc": 10, "batch_real": 8},
                 dd_loss={"name": "dc"})
    assert (r.loss.outer_loop, r.loss.inner_loop) == (10, 50)
    assert r.loss.params.net_momentum == 0.0 and r.loss.params.net_lr == 0.01


def test_dsa_needs_an_augmentation(tiny_recipe, tmp_path):
    with pytest.raises(PluginError, match=r"dsa.*`augmentation`"):
        make_run(tiny_recipe, tmp_path, augmentation=None, dd_loss={"name": "dsa"})
    with pytest.raises(PluginError, match=r"dc with augment: true.*`augmentation`"):
        make_run(tiny_recipe, tmp_path, augmentation=None,
                 dd_loss={"name": "dc", "augment": True})
    assert DifferentiableSiameseAugmentation.Params().augment is True
    assert DatasetCondensation.Params().augment is False


# ------------------------------------------------------------------- full engine runs


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_lambda_zero_reproduces_the_method_exactly(tiny_recipe, tmp_path, name):
    loss = {"name": name, "outer_loop": 2, "inner_loop": 1}
    kw = {"dd_loss": loss, "synthetic": {**SMALL, "iterations": 4}}
    assert_lambda_zero_is_exact(lambda reg: tiny_recipe(**kw, regularizer=reg), tmp_path)


def test_resume_restores_the_persistent_network(tiny_recipe, tmp_path):
    # checkpoint at iteration 4: call 4 trains the network made at call 3 (outer_loop 3)
    rec = tiny_recipe(dd_loss={"name": "dsa", "outer_loop": 3, "inner_loop": 1},
                      synthetic=SMALL)
    assert_resume_is_exact(rec, tmp_path)
