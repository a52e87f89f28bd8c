"""Coreset baselines: herding, k-center, random selection and their synthetic-set files."""

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from mim4dd_kit.cli import app
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import DataError, RecipeError, RunError
from mim4dd_kit.coresets import Herding, KCenter, RandomSubset, _common
from mim4dd_kit.io.synthetic import load_synthetic
from mim4dd_kit.run.baseline import make_baseline

runner = CliRunner()
METHODS = [RandomSubset(), Herding(), KCenter(), KCenter(KCenter.Params(first="random"))]


def _gaussian_classes(sizes, dim=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    feats = torch.randn(len(labels), dim, generator=g, dtype=dtype) + 3.0 * labels[:, None]
    return feats, labels


def _radius(points, centres):
    """Largest distance of any point to its nearest centre (the k-center objective)."""
    return float(torch.cdist(points, centres).min(1).values.max())


def test_herding_first_pick_is_closest_to_class_mean():
    # class 0 mean (0, 0.775): (0, 0.1) is clearly the closest; class 1 likewise shifted
    base = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.1], [0.0, 3.0]], dtype=torch.float64)
    feats = torch.cat([base, base[[3, 0, 2, 1]] + 10.0])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    idx = Herding().select(feats, labels, 1)
    assert idx.tolist() == [2, 6]
    for c, i in enumerate(idx.tolist()):
        members = torch.nonzero(labels == c).flatten()
        dist = (feats[members] - feats[members].mean(0)).norm(dim=1)
        assert i == int(members[dist.argmin()])


def test_herding_running_mean_tracks_class_mean_faster_than_random():
    feats, labels = _gaussian_classes([120, 90, 150], dim=16, seed=1)
    ipc = 8

    def errors(idx):
        out = []
        for c in range(3):
            chosen = feats[idx[c * ipc:(c + 1) * ipc]]
            mu = feats[labels == c].mean(0)
            out.append([float((chosen[:k].mean(0) - mu).norm()) for k in range(1, ipc + 1)])
        return torch.tensor(out)  # (classes, ipc)

    herd = errors(Herding().select(feats, labels, ipc))
    rand = torch.stack([errors(RandomSubset().select(feats, labels, ipc,
                                                     torch.Generator().manual_seed(s)))
                        for s in range(20)]).mean(0)
    assert (herd < rand).all()
    # and it keeps improving: the mean of all ipc picks is far closer than one pick
    assert (herd[:, -1] < 0.5 * herd[:, 0]).all()


def test_k_center_covers_better_than_random():
    # every class has 8 tight, well separated clusters; 8 centres should hit all of them
    g = torch.Generator().manual_seed(0)
    offsets = torch.randn(8, 2, generator=g) * 20
    pts = (offsets[:, None, :] + 0.3 * torch.randn(8, 25, 2, generator=g)).reshape(-1, 2)
    feats = torch.cat([pts, pts + 100.0])
    labels = torch.arange(2).repeat_interleave(len(pts))
    ipc = 8
    kc = KCenter().select(feats, labels, ipc)
    for c in range(2):
        members = feats[labels == c]
        r_kc = _radius(members, feats[kc[c * ipc:(c + 1) * ipc]])
        for seed in range(5):
            rnd = RandomSubset().select(feats, labels, ipc, torch.Generator().manual_seed(seed))
            assert r_kc <= _radius(members, feats[rnd[c * ipc:(c + 1) * ipc]])


@pytest.mark.parametrize("first", ["mean", "random"])
def test_k_center_is_within_twice_the_optimum(first):
    for seed in range(4):
        feats, labels = _gaussian_classes([10, 9], dim=2, seed=seed, dtype=torch.float64)
        ipc = 3
        idx = KCenter(KCenter.Params(first=first)).select(
            feats, labels, ipc, torch.Generator().manual_seed(seed))
        for c in range(2):
            members = torch.nonzero(labels == c).flatten()
            pts = feats[members]
            greedy = _radius(pts, feats[idx[c * ipc:(c + 1) * ipc]])
            optimum = min(_radius(pts, pts[list(combo)])
                          for combo in itertools.combinations(range(len(pts)), ipc))
            assert optimum <= greedy <= 2 * optimum + 1e-9


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.name}")
def test_every_class_gets_ipc_distinct_indices_of_its_own(method):
    feats, labels = _gaussian_classes([7, 12, 5, 9], seed=3)
    ipc = 5
    idx = method.select(feats, labels, ipc, torch.Generator().manual_seed(0))
    assert idx.shape == (4 * ipc,) and idx.dtype == torch.int64
    assert labels[idx].tolist() == [c for c in range(4) for _ in range(ipc)]
    for c in range(4):
        assert len(set(idx[c * ipc:(c + 1) * ipc].tolist())) == ipc
    # a class with exactly ipc images gives all of them
    assert sorted(idx[2 * ipc:3 * ipc].tolist()) == sorted(
        torch.nonzero(labels == 2).flatten().tolist())


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.name}")
def test_blocks_of_classes_give_the_same_choice(method, monkeypatch):
    feats, labels = _gaussian_classes([30, 25, 40, 35, 20], seed=4)
    whole = method.select(feats, labels, 4, torch.Generator().manual_seed(7))
    monkeypatch.setattr(_common, "BLOCK_ELEMENTS", 1)  # one class per block
    if method.name == "random":  # the keys are drawn per block: same law, other draws
        split = method.select(feats, labels, 4, torch.Generator().manual_seed(7))
        assert labels[split].tolist() == labels[whole].tolist()
    else:
        assert torch.equal(method.select(feats, labels, 4, torch.Generator().manual_seed(7)),
                           whole)


def test_random_is_reproducible_from_the_seed():
    feats, labels = _gaussian_classes([50, 60, 40], seed=5)
    pick = [RandomSubset().select(feats, labels, 6, torch.Generator().manual_seed(s))
            for s in (11, 11, 12)]
    assert torch.equal(pick[0], pick[1])
    assert not torch.equal(pick[0], pick[2])


def test_too_large_ipc_names_the_class():
    feats, labels = _gaussian_classes([10, 3, 10])
    with pytest.raises(DataError, match="class 1 has only 3"):
        Herding().select(feats, labels, 4)


def test_methods_are_registered_plugins():
    reg = default_registry()
    assert {"random", "herding", "k_center"} <= set(reg.names("coresets"))
    assert isinstance(reg.build("coresets", {"name": "k_center", "first": "random"}), KCenter)
    res = runner.invoke(app, ["list-plugins", "--kind", "coresets", "--json"])
    assert res.exit_code == 0
    assert {r["name"] for r in json.loads(res.stdout)} >= {"random", "herding", "k_center"}


def test_baseline_file_loads_with_provenance(tmp_path):
    out = tmp_path / "herding.safetensors"
    make_baseline("digits", "herding", 3, 0, out, features={"space": "pixels"}, device="cpu")
    s = load_synthetic(out)
    assert s.images.shape == (30, 1, 8, 8)
    assert s.labels.tolist() == [c for c in range(10) for _ in range(3)]
    # herding's first pick in each class is the training image nearest the class mean
    data = default_registry().build("datasets", {"name": "digits"}).load()
    for c in range(10):
        members = data.train_images[data.train_labels == c].flatten(1)
        nearest = (members - members.mean(0)).norm(dim=1).argmin()
        assert torch.equal(s.images[3 * c].flatten(), members[nearest])
    meta = s.metadata
    assert meta["coreset"]["method"] == "herding"
    assert meta["coreset"]["params"] == {"normalize": False}
    assert meta["coreset"]["features"] == {"space": "pixels"}
    assert meta["recipe"]["dataset"] == {"name": "digits"} and meta["seed"] == 0
    assert meta["dataset"]["name"] == "digits" and len(meta["dataset"]["mean"]) == 1
    assert {c["key"] for c in meta["components"]} == {"dataset", "coreset"}
    # the stored images are exactly the indexed real training images
    data = default_registry().build("datasets", {"name": "digits"}).load()
    idx = torch.tensor(meta["coreset"]["indices"])
    assert torch.equal(s.images, data.train_images[idx])
    assert torch.equal(s.labels, data.train_labels[idx])
    with pytest.raises(RunError, match="already exists"):
        make_baseline("digits", "herding", 3, 0, out, device="cpu")


def test_baseline_with_network_features(tmp_path):
    out = tmp_path / "kc.safetensors"
    feats = {"space": "convnet", "width": 8, "depth": 2, "epochs": 1}
    make_baseline({"name": "digits"}, {"name": "k_center"}, 2, 3, out, features=feats,
                  device="cpu")
    info = load_synthetic(out).metadata["coreset"]["features"]
    assert info["backbone"] == {"name": "convnet", "width": 8, "depth": 2}
    # 1-channel input: the first conv pads by 3, so 8x8 -> 12x12 -> 6x6 -> 3x3 (x 8 channels)
    assert info["dim"] == 8 * 3 * 3 and 0.0 <= info["test_accuracy"] <= 100.0
    with pytest.raises(RecipeError, match="features.epochs"):
        make_baseline("digits", "k_center", 2, 3, tmp_path / "x.safetensors",
                      features={"epochs": -1})


def test_cli_baseline_evaluate_and_errors(tmp_path):
    out = tmp_path / "rand.safetensors"
    res = runner.invoke(app, ["baseline", "digits", "--method", "random", "--ipc", "2",
                              "--out", str(out), "--seed", "4", "--device", "cpu",
                              "--evaluate", "--models", "1", "--epochs", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"] == "random" and summary["images"] == 20
    acc = summary["evaluations"]["train_from_scratch"]["accuracy_mean"]
    stored = load_synthetic(out).metadata["evaluations"]["train_from_scratch"]
    assert stored["accuracy_mean"] == acc and 0.0 <= acc <= 100.0
    res = runner.invoke(app, ["baseline", "digits", "--method", "k_center", "--ipc", "2",
                              "--out", str(tmp_path / "k.safetensors"),
                              "--set", "method.frist=random"])
    assert res.exit_code == 2 and "method.frist: unknown key" in res.stderr
    res = runner.invoke(app, ["baseline", "digits", "--method", "herding", "--ipc", "2",
                              "--out", str(tmp_path / "h.safetensors"), "--features", "pixel"])
    assert res.exit_code == 2 and "features.space" in res.stderr
    assert "Traceback" not in res.output
