"""dsa_kmeans: batched k-means, representative selection, refresh schedule, engine runs."""


import pytest
import torch
from helpers import (
    MIM,
    assert_lambda_zero_is_exact,
    assert_loss_decreases,
    assert_resume_is_exact,
    set_up_run,
)

from mim4dd_kit.dd_losses import kmeans as kmeans_module
from mim4dd_kit.dd_losses.dsa_kmeans import DSAKMeans, class_table, kmeans, nearest_points
from mim4dd_kit.run.engine import Run

SMALL = {"ipc": 2, "batch_real": 8}



def make_run(tiny_recipe, tmp_path, **changes) -> Run:
    changes.setdefault("synthetic", SMALL)
    changes.setdefault("augmentation", {"name": "dsa"})
    return set_up_run(tiny_recipe(**changes), tmp_path)


# ------------------------------------------------------------------------ k-means


def _blobs():
    """Two groups of three tight 2-D blobs; group 1 has two padding rows far away."""
    centres = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]],
                            [[-20.0, 5.0], [5.0, 5.0], [30.0, -30.0]]])
    offsets = torch.tensor([[0.3, 0.0], [-0.3, 0.0], [0.0, 0.2], [0.0, -0.1]])
    x = (centres[:, :, None, :] + offsets[None, None]).reshape(2, 12, 2)  # (C, P, D)
    valid = torch.ones(2, 12, dtype=torch.bool)
    x[1, 10:] = torch.tensor([5.0, 5.05])  # closest to a centre, but padding
    valid[1, 10:] = False
    return x, valid


def test_kmeans_finds_the_blobs_and_picks_the_nearest_real_sample():
    x, valid = _blobs()
    torch.manual_seed(0)
    # one initial point in each blob, in a shuffled order
    init = torch.tensor([[4, 0, 8], [9, 0, 4]])
    centres = kmeans(x, 3, 20, valid, init=init)
    means = torch.stack([
        x[0].reshape(3, 4, 2).mean(1),
        torch.cat([x[1, :8].reshape(2, 4, 2).mean(1), x[1, 8:10].mean(0, keepdim=True)]),
    ])
    for g in range(2):
        got = sorted(map(tuple, centres[g].round(decimals=4).tolist()))
        want = sorted(map(tuple, means[g].round(decimals=4).tolist()))
        assert got == want
    idx = nearest_points(x, centres, valid)
    # a blob's mean sits at offset (0, 0.025): its 4th point (0, -0.1) is the nearest; the
    # two-point blob is a tie (first wins); the padding (0.025 away) is never chosen
    assert [sorted(row) for row in idx.tolist()] == [[3, 7, 11], [3, 7, 8]]


def test_kmeans_is_vectorised_over_groups():
    torch.manual_seed(1)
    x = torch.randn(4, 30, 5)
    valid = torch.rand(4, 30) > 0.2
    init = torch.stack([torch.nonzero(v).flatten()[:3] for v in valid])
    batched = kmeans(x, 3, 15, valid, init=init)
    for g in range(4):
        alone = kmeans(x[g : g + 1], 3, 15, valid[g : g + 1], init=init[g : g + 1])
        torch.testing.assert_close(batched[g : g + 1], alone, rtol=1e-5, atol=1e-6)
    torch.manual_seed(2)
    drawn = kmeans(x, 3, 50, valid)  # random distinct valid initial points
    assert drawn.shape == (4, 3, 5) and torch.isfinite(drawn).all()
    # a Lloyd fixed point: each centre is the mean of the valid points nearest to it
    for g in range(4):
        pts = x[g][valid[g]]
        nearest = ((pts[:, None] - drawn[g][None]) ** 2).sum(-1).argmin(1)
        for j in range(3):
            torch.testing.assert_close(drawn[g, j], pts[nearest == j].mean(0))
    with pytest.raises(ValueError, match="at least 31 points"):
        kmeans(x, 31, 2)


def test_class_table_lists_every_class():
    labels = torch.tensor([2, 0, 1, 0, 2, 2])
    table = class_table(labels, 3)
    assert table.tolist() == [[1, 3, -1], [2, -1, -1], [0, 4, 5]]


# ------------------------------------------------------------------ plugin behaviour


def test_representatives_are_class_members_nearest_the_centres(tiny_recipe, tmp_path,
                                                               monkeypatch):
    calls = []
    real_kmeans = kmeans_module.kmeans
    monkeypatch.setattr(kmeans_module, "kmeans",
                        lambda x, *a, **k: (calls.append(x.shape), real_kmeans(x, *a, **k))[1])
    r = make_run(tiny_recipe, tmp_path, regularizer=MIM,
                 dd_loss={"name": "dsa_kmeans", "clusters": 5, "kmeans_iters": 10})
    out = r.loss.compute(r.syn, 0, want_features=True)
    sel = r.loss.selection
    labels = r.data.train_labels
    assert sel.shape == (10, 5)
    assert torch.equal(labels[sel], torch.arange(10)[:, None].expand(10, 5))
    # one k-means call for all classes, on the whole classes (pool None)
    width = int(torch.bincount(labels).max())
    assert len(calls) == 1 and calls[0][:2] == (10, width)
    assert torch.equal(out.real_labels, torch.arange(10).repeat_interleave(5))
    for f_s, f_r in zip(out.syn_feats, out.real_feats, strict=True):
        assert f_s.shape[0] == 20 and f_r.shape[0] == 50 and f_s.shape[1:] == f_r.shape[1:]
        assert f_s.requires_grad and not f_r.requires_grad
    value = r.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    (out.loss + value).backward()
    assert r.syn.images.grad is not None and r.syn.images.grad.abs().sum() > 0


def test_default_clusters_follow_batch_real_and_pool_limits_the_clustered_set(
        tiny_recipe, tmp_path, monkeypatch):
    r = make_run(tiny_recipe, tmp_path, dd_loss={"name": "dsa_kmeans", "kmeans_iters": 5})
    r.loss.compute(r.syn, 0, False)
    assert r.loss.selection.shape == (10, 8)  # clusters None: synthetic.batch_real
    assert torch.equal(r.data.train_labels[r.loss.selection],
                       torch.arange(10)[:, None].expand(10, 8))
    assert all(len(set(row)) == 8 for row in r.loss.selection.tolist())  # distinct members
    shapes = []
    real_kmeans = kmeans_module.kmeans
    monkeypatch.setattr(kmeans_module, "kmeans",
                        lambda x, *a, **k: (shapes.append(x.shape), real_kmeans(x, *a, **k))[1])
    p = make_run(tiny_recipe, tmp_path / "p",
                 dd_loss={"name": "dsa_kmeans", "pool": 12, "clusters": 4, "kmeans_iters": 5})
    p.loss.compute(p.syn, 0, False)
    assert shapes[0][:2] == (10, 12) and p.loss.selection.shape == (10, 4)
    assert torch.equal(p.data.train_labels[p.loss.selection],
                       torch.arange(10)[:, None].expand(10, 4))


@pytest.mark.parametrize(("outer", "expected"), [(4, [1, 0, 1, 0, 1, 0]),
                                                 (3, [1, 0, 1, 1, 0, 1])])
def test_refresh_every_interval_calls_and_with_every_new_network(tiny_recipe, tmp_path,
                                                                 outer, expected):
    r = make_run(tiny_recipe, tmp_path, dd_loss={
        "name": "dsa_kmeans", "outer_loop": outer, "inner_loop": 1, "interval": 2,
        "clusters": 3, "kmeans_iters": 5})
    seen, selections = [], []
    for it in range(6):
        seen.append(r.loss.compute(r.syn, it, False).logs["kmeans_refresh"])
        selections.append(r.loss.selection.clone())
    assert seen == [float(e) for e in expected]
    for it in range(1, 6):
        if not expected[it]:  # kept between refreshes
            assert torch.equal(selections[it], selections[it - 1])


def test_loss_decreases_over_engine_steps(tiny_recipe, tmp_path):
    r = make_run(tiny_recipe, tmp_path, synthetic={**SMALL, "lr": 0.1},
                 dd_loss={"name": "dsa_kmeans", "outer_loop": 1, "clusters": 4,
                          "kmeans_iters": 10})
    # probe: a fresh network and a fresh clustering from the same seed
    assert_loss_decreases(r, steps=6, probe_seed=99)


def test_params_inherit_dsa_and_learn_no_lr():
    p = DSAKMeans.Params()
    assert (p.interval, p.kmeans_iters, p.clusters, p.pool) == (10, 100, None, None)
    assert p.distance == "ours" and p.net_lr == 0.01 and p.augment
    assert not DSAKMeans.learns_lr


# ------------------------------------------------------------------- full engine runs


LOSS = {"name": "dsa_kmeans", "outer_loop": 3, "inner_loop": 1, "interval": 2, "clusters": 4,
        "kmeans_iters": 10}


def test_lambda_zero_reproduces_dsa_kmeans_exactly(tiny_recipe, tmp_path):
    kw = {"dd_loss": LOSS, "synthetic": {**SMALL, "iterations": 4}}
    assert_lambda_zero_is_exact(lambda reg: tiny_recipe(**kw, regularizer=reg), tmp_path)


def test_resume_restores_network_and_selection(tiny_recipe, tmp_path):
    # checkpoint at 4: call 4 (position 1 of the network made at call 3) reuses the
    # selection made at call 3, so the selection must come back from the checkpoint
    rec = tiny_recipe(dd_loss=LOSS, synthetic=SMALL)
    assert_resume_is_exact(rec, tmp_path)
