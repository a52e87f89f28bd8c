"""Linear CKA maths and the analysis evaluators cka, mi_estimate and cross_arch."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mim4dd_kit.api import BackboneRef, EvalRequest, EvaluatorRef
from mim4dd_kit.config.registry import ParamsError, default_registry
from mim4dd_kit.core.errors import MdkError
from mim4dd_kit.evaluators.cross_arch import CrossArch
from mim4dd_kit.evaluators.train_from_scratch import TrainFromScratch
from mim4dd_kit.run.evaluate import run_evaluators
from mim4dd_kit.training.cka import cka_matrix, linear_cka

CPU = torch.device("cpu")
TINY_NET = BackboneRef(name="convnet", width=8, depth=2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def paper_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Section 3.5 literally: H K H, H L H, HSIC = vec·vec / (m-1)², then the ratio."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    m = len(x)
    h = torch.eye(m, dtype=torch.float64) - torch.ones(m, m, dtype=torch.float64) / m
    k, lg = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h

    def hsic(a, b):
        return float((a.reshape(-1) @ b.reshape(-1)) / (m - 1) ** 2)

    return hsic(k, lg) / math.sqrt(hsic(k, k) * hsic(lg, lg))


# -- linear CKA --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gram", "feature", "auto"])
@pytest.mark.parametrize("n,p", [(40, 6), (12, 30)])
def test_cka_of_a_representation_with_itself_is_one(method, n, p):
    x = torch.randn(n, p, generator=gen(0))
    assert linear_cka(x, x, method=method).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_both_forms_match_the_papers_formula(method):
    x = torch.randn(30, 5, generator=gen(1))
    y = torch.randn(30, 50, generator=gen(2)) + x.repeat(1, 10)  # related, so CKA is not ~0
    want = paper_cka(x, y)
    assert 0.05 < want < 0.95
    assert linear_cka(x, y, method=method).item() == pytest.approx(want, rel=1e-10)


def test_invariant_to_orthogonal_maps_isotropic_scaling_and_shifts():
    f64 = torch.float64  # so the transformed inputs carry no float32 rounding
    x = torch.randn(50, 8, generator=gen(3), dtype=f64)
    y = x @ torch.randn(8, 6, generator=gen(4), dtype=f64) + 0.5 * torch.randn(
        50, 6, generator=gen(5), dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen(6), dtype=f64))
    base = linear_cka(x, y).item()
    assert 0.1 < base < 0.99
    for method in ("gram", "feature"):
        assert linear_cka(x @ q, y, method=method).item() == pytest.approx(base, rel=1e-9)
        assert linear_cka(3.7 * x, y, method=method).item() == pytest.approx(base, rel=1e-9)
        assert linear_cka(x, y - 4.0, method=method).item() == pytest.approx(base, rel=1e-9)
    assert linear_cka(x, x @ q).item() == pytest.approx(1.0, abs=1e-12)


def test_not_invariant_to_non_isotropic_scaling():
    x = torch.randn(50, 8, generator=gen(7))
    y = x @ torch.randn(8, 6, generator=gen(8)) + 0.5 * torch.randn(50, 6, generator=gen(9))
    d = torch.diag(torch.tensor([10.0, 5.0, 1.0, 1.0, 0.3, 0.1, 0.1, 0.1]))
    assert abs(linear_cka(x @ d, y).item() - linear_cka(x, y).item()) > 0.02
    assert linear_cka(x, x @ d).item() < 0.95


def test_independent_features_have_small_cka_when_n_is_large():
    # for independent n x p Gaussian features CKA is about sqrt(p q) / n (here 0.005)
    for seed in range(3):
        x = torch.randn(2000, 10, generator=gen(10 + seed))
        y = torch.randn(2000, 10, generator=gen(20 + seed))
        assert linear_cka(x, y).item() < 0.03
    # and large when n is not much bigger than p: CKA says little about so few samples
    small = linear_cka(torch.randn(12, 10, generator=gen(30)), torch.randn(12, 10,
                                                                            generator=gen(31)))
    assert small.item() > 0.3


def test_conv_maps_are_flattened_and_bad_inputs_raise():
    x = torch.randn(16, 2, 3, 3, generator=gen(11))
    y = torch.randn(16, 5, generator=gen(12))
    assert linear_cka(x, y).item() == pytest.approx(linear_cka(x.flatten(1), y).item())
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, y[:10])
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(x[:1], y[:1])
    with pytest.raises(ValueError, match="method"):
        linear_cka(x, y, method="svd")
    # a constant layer has no defined CKA: 0, not NaN
    assert linear_cka(torch.ones(16, 4), y).item() == 0.0


def test_cka_matrix_matches_pairwise_values_in_both_forms():
    a = [torch.randn(24, 3, 4, 4, generator=gen(13)), torch.randn(24, 7, generator=gen(14))]
    a.append(a[1] @ torch.randn(7, 5, generator=gen(15)))
    b = [a[0] + 0.3 * torch.randn(24, 3, 4, 4, generator=gen(16)), torch.randn(24, 2,
                                                                              generator=gen(17))]
    want = torch.tensor([[linear_cka(x, y, method="gram").item() for y in b] for x in a],
                        dtype=torch.float64)
    for method in ("gram", "feature", "auto"):
        m = cka_matrix(a, b, method=method)
        assert m.shape == (3, 2) and m.dtype == torch.float64
        torch.testing.assert_close(m, want, rtol=1e-9, atol=1e-12)
    assert cka_matrix(a, a).diagonal().tolist() == pytest.approx([1.0] * 3)
    with pytest.raises(ValueError):
        cka_matrix(a, [])


# -- evaluators ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return default_registry().build("datasets", {"name": "digits"}).load()


@pytest.fixture(scope="module")
def syn(digits):
    """Three real training images per class as a stand-in synthetic set."""
    return digits.sample_per_class(3, generator=gen(0))


def evaluate(name, images, labels, data, seed=0, backbone=TINY_NET, progress=None, **params):
    ref = EvaluatorRef(name=name, **params)
    return run_evaluators([ref], images, labels, None, data, device=CPU, seed=seed,
                          backbone=backbone, progress=progress)[name]


def test_cka_evaluator_on_digits_writes_matrix_json_and_plot(digits, syn, tmp_path):
    calls = []
    res = evaluate("cka", *syn, digits, real_epochs=1, epochs=3, probe=120, out_dir=str(tmp_path),
                   augmentation=None, progress=lambda *a: calls.append(a))
    m = torch.tensor(res["matrix"])
    assert res["layers"] == ["block1", "block2", "logits"]
    assert m.shape == (3, 3)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in res["diagonal"])
    assert ((m >= 0) & (m <= 1 + 1e-9)).all()
    assert res["diagonal"] == pytest.approx(m.diagonal().tolist())
    assert res["probe"] == 120 and res["method"] == "gram"  # block1 has 8*6*6 > 120 values
    assert 0 <= res["real_accuracy"] <= 100 and 0 <= res["syn_accuracy"] <= 100
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    saved = json.loads((tmp_path / "cka.json").read_text())
    assert saved["matrix"] == res["matrix"] and saved["layers"] == res["layers"]
    if res["files"].get("plot"):
        assert (tmp_path / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert res["warnings"], "a missing picture must be explained"
    # seeded: the same request gives the same matrix
    again = evaluate("cka", *syn, digits, real_epochs=1, epochs=3, probe=120, augmentation=None,
                     plot=False)
    assert again["matrix"] == res["matrix"] and "files" not in again


def test_cka_evaluator_rejects_an_unwritable_out_dir_before_training(digits, syn, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MdkError, match="out_dir"):
        evaluate("cka", *syn, digits, real_epochs=1, epochs=1, probe=20,
                 out_dir=str(blocker / "sub"))


def mi(data, images, labels, seed, network="random", **params):
    params = {"epochs": 5, "critic_steps": 40, "batch_real": 8, "augmentation": None,
              "critic": {"name": "linear", "out_dim": 16}, **params}
    return evaluate("mi_estimate", images, labels, data, seed=seed, network=network, **params)


@pytest.mark.parametrize("network", ["random", "trained"])
def test_mi_estimate_is_higher_for_a_set_that_matches_the_real_classes(digits, network):
    images, labels = digits.sample_per_class(4, generator=gen(5))
    shuffled = labels[torch.randperm(len(labels), generator=gen(6))]
    noise = torch.randn(images.shape, generator=gen(7))
    for seed in (0, 1):
        matched = mi(digits, images, labels, seed, network)
        wrong = mi(digits, images, shuffled, seed, network)
        noisy = mi(digits, noise, labels, seed, network)
        ceiling = math.log(digits.info.num_classes - 1)
        assert matched["layers"] == [1, 2] and matched["upper_limit"] == pytest.approx(ceiling)
        for k in range(2):
            assert matched["mi_lower_bound"][k] > wrong["mi_lower_bound"][k] + 0.2
            assert matched["mi_lower_bound"][k] > noisy["mi_lower_bound"][k] + 0.2
            assert matched["nce"][k] < wrong["nce"][k]
            assert matched["mi_lower_bound"][k] < ceiling
        assert matched["network"] == network and len(matched["nce"]) == 2


def test_mi_estimate_with_a_parameterless_critic_needs_no_fitting(digits, syn):
    res = mi(digits, *syn, seed=0, critic={"name": "identity"}, critic_steps=5)
    assert all(math.isfinite(v) and v < res["upper_limit"] for v in res["mi_lower_bound"])


def test_cross_arch_trains_every_backbone_that_fits_and_skips_the_rest(digits, syn):
    backbones = [TINY_NET, {"name": "mlp", "width": 16}, "lenet", "vgg11", "resnet18"]
    res = evaluate("cross_arch", *syn, digits, backbones=backbones, models=2, epochs=2,
                   augmentation=None)
    assert [r["label"] for r in res["table"]] == ["convnet (width=8, depth=2)", "mlp (width=16)"]
    for row in res["table"]:
        assert len(row["accuracies"]) == 2
        assert all(0 <= a <= 100 for a in row["accuracies"])
        assert row["accuracy_mean"] == pytest.approx(sum(row["accuracies"]) / 2)
        assert row["accuracy_std"] >= 0 and row["seconds"] >= 0
    assert [s["backbone"] for s in res["skipped"]] == ["lenet", "vgg11", "resnet18"]
    assert all("8x8" in s["reason"] for s in res["skipped"])
    md = res["markdown"].splitlines()
    assert md[0].startswith("| backbone |") and md[2].startswith("| convnet (width=8, depth=2) |")
    assert sum("skipped" in line for line in md) == 3
    # each row is exactly the train_from_scratch protocol on that backbone
    tfs = evaluate("train_from_scratch", *syn, digits, models=2, epochs=2, augmentation=None)
    assert res["table"][0]["accuracies"] == tfs["accuracies"]


def test_cross_arch_names_uninstalled_backbones(digits, syn):
    with pytest.raises(ParamsError, match="nope"):
        default_registry().validate("evaluators", {"name": "cross_arch", "backbones": ["nope"]})
    # built directly (no registry validation), an unknown name is skipped, not fatal
    ev = CrossArch(CrossArch.Params(backbones=["nope", {"name": "mlp", "width": 8}], models=1,
                                    epochs=1, augmentation=None))
    req = EvalRequest(*syn, None, digits, CPU, 0, None, None)
    res = ev.evaluate(req, default_registry())
    assert res["skipped"] == [{"backbone": "nope", "reason": "not installed"}]
    assert [r["backbone"] for r in res["table"]] == ["mlp"]
    assert TrainFromScratch.Params().models == CrossArch.Params().models
