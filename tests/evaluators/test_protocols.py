"""Evaluation protocol presets of train_from_scratch (each paper's own evaluation)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from typer.testing import CliRunner

from mim4dd_kit.analysis.compare import compare, format_compare
from mim4dd_kit.api import EvaluatorRef
from mim4dd_kit.cli import app
from mim4dd_kit.config.registry import ParamsError, default_registry
from mim4dd_kit.evaluators.train_from_scratch import PROTOCOLS, TrainFromScratch, with_protocol
from mim4dd_kit.io.synthetic import load_synthetic
from mim4dd_kit.run.evaluate import run_evaluators
from mim4dd_kit.training.loop import train_network

CPU = torch.device("cpu")
P = TrainFromScratch.Params
runner = CliRunner()

#: (models, epochs, augmentation, weight_decay, lr_decay, batch_size, use_learned_lr, lr)
EXPECTED = {
    "mim4dd": (5, 300, "dsa", 5e-4, True, 256, True, 0.01),
    "dc": (20, 300, None, 5e-4, True, 256, True, 0.01),
    "dsa": (20, 1000, "dsa", 5e-4, True, 256, True, 0.01),
    "dm": (20, 1000, "dsa", 5e-4, True, 256, True, 0.01),
    "mtt": (5, 1000, "dsa", 5e-4, True, 256, True, 0.01),
    "bptt": (10, 300, None, 0.0, False, 640, False, 0.01),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_resolves_to_its_papers_settings(name):
    s = P(protocol=name).resolved()
    aug = s["augmentation"]["name"] if s["augmentation"] else None
    got = (s["models"], s["epochs"], aug, s["weight_decay"], s["lr_decay"], s["batch_size"],
           s["use_learned_lr"], s["lr"])
    assert got == EXPECTED[name]
    assert s["momentum"] == 0.9  # every reference: SGD momentum 0.9


def test_default_is_the_mim4dd_protocol_and_unchanged():
    assert P() == P(protocol="mim4dd") and PROTOCOLS["mim4dd"] == {}
    p = P()
    assert (p.models, p.epochs, p.augmentation.name, p.weight_decay, p.lr_decay) == (
        5, 300, "dsa", 5e-4, True)


def test_explicit_fields_override_the_preset():
    p = P(protocol="bptt", models=2, weight_decay=1e-3)
    assert (p.models, p.weight_decay, p.epochs, p.batch_size, p.lr_decay) == (
        2, 1e-3, 300, 640, False)
    p = P(protocol="dc", augmentation={"name": "dsa"})
    assert p.augmentation.name == "dsa" and p.models == 20
    with pytest.raises(ValueError):
        P(protocol="imagenet")
    with pytest.raises(ParamsError):
        default_registry().validate("evaluators", {"name": "train_from_scratch",
                                                   "protocol": "dcc"})


def test_with_protocol_drops_the_settings_a_protocol_decides():
    spec = {"name": "train_from_scratch", "models": 5, "epochs": 300, "batched": False,
            "backbone": {"name": "mlp"}, "augmentation": {"name": "dsa"}}
    assert with_protocol(spec, "dm") == {"name": "train_from_scratch", "batched": False,
                                         "backbone": {"name": "mlp"}, "protocol": "dm"}


def test_constant_lr_without_decay():
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.arange(3).repeat(4)

    def net():
        torch.manual_seed(1)
        return torch.nn.Linear(4, 3)

    torch.manual_seed(2)
    got = train_network(net(), x, y, epochs=4, lr=0.1, momentum=0.9, weight_decay=0.0,
                        batch_size=5, lr_decay=False)
    torch.manual_seed(2)
    ref = net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):  # the whole training at lr 0.1
        order = torch.randperm(12)
        for i in range(0, 12, 5):
            idx = order[i:i + 5]
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    for a, b in zip(got.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(2)
    decayed = train_network(net(), x, y, epochs=4, lr=0.1, momentum=0.9, weight_decay=0.0,
                            batch_size=5)
    assert not torch.equal(decayed.weight, got.weight)


@pytest.fixture(scope="module")
def digits():
    return default_registry().build("datasets", {"name": "digits"}).load()


def _score(digits, images, labels, **params):
    ref = EvaluatorRef(name="train_from_scratch", backbone={"name": "mlp", "width": 16},
                       **params)
    return run_evaluators([ref], images, labels, None, digits, device=CPU, seed=0)[
        "train_from_scratch"]


def test_records_the_protocol_and_mim4dd_numbers_are_the_default(digits):
    images, labels = digits.train_images[:30], digits.train_labels[:30]
    plain = _score(digits, images, labels, models=2, epochs=3)
    named = _score(digits, images, labels, models=2, epochs=3, protocol="mim4dd")
    assert plain["accuracies"] == named["accuracies"]  # bit-identical
    assert plain["protocol"] == "mim4dd" and plain["settings"]["models"] == 2
    assert plain["settings"]["augmentation"] == {"name": "dsa"}
    bptt = _score(digits, images, labels, models=2, epochs=3, protocol="bptt")
    assert bptt["protocol"] == "bptt" and bptt["params"]["protocol"] == "bptt"
    assert bptt["settings"] == {"models": 2, "epochs": 3, "lr": 0.01, "use_learned_lr": False,
                                "momentum": 0.9, "weight_decay": 0.0, "batch_size": 640,
                                "augmentation": None, "lr_decay": False}
    # long enough to learn something: the preset's settings change the networks
    longer = {"models": 1, "epochs": 40, "lr": 0.1}
    assert (_score(digits, images, labels, protocol="bptt", **longer)["accuracies"]
            != _score(digits, images, labels, **longer)["accuracies"])


def test_cli_protocol_is_recorded_and_shown_by_compare(tmp_path):
    torch.manual_seed(0)
    f = tmp_path / "set.safetensors"
    save_file({"images": torch.randn(20, 1, 8, 8), "labels": torch.arange(10).repeat(2)},
              str(f))
    res = runner.invoke(app, ["evaluate", str(f), "--dataset", "digits", "--protocol", "dc",
                              "--models", "1", "--epochs", "2", "--backbone", "mlp",
                              "--save", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)["evaluations"]["train_from_scratch"]
    assert ev["protocol"] == "dc" and ev["settings"]["augmentation"] is None
    assert (ev["models"], ev["epochs"]) == (1, 2)  # explicit options beat the preset
    stored = load_synthetic(f).metadata["evaluations"]["train_from_scratch"]
    assert stored["protocol"] == "dc"
    table = format_compare(compare([f]))
    head, _, row = table.strip().splitlines()
    assert "| train_from_scratch acc % | train_from_scratch protocol |" in head
    assert row.endswith("| protocol dc × 1 nets × 2 ep |")
    res = runner.invoke(app, ["evaluate", str(f), "--dataset", "digits", "--protocol",
                              "imagenet"])
    assert res.exit_code != 0 and "protocol" in res.output
    res = runner.invoke(app, ["evaluate", str(f), "--dataset", "digits", "--protocol", "dc",
                              "--evaluator", "cka"])
    assert res.exit_code != 0 and "--protocol applies to the train_from_scratch" in res.output


@pytest.mark.parametrize("lr", [-6.2e-05, 0.0, float("nan")])
def test_a_learned_lr_that_is_not_positive_is_refused_with_the_way_out(lr):
    from types import SimpleNamespace

    from mim4dd_kit.core.errors import SyntheticSetError
    from mim4dd_kit.training.protocol import ProtocolParams

    with pytest.raises(SyntheticSetError, match="use_learned_lr=false"):
        ProtocolParams().lr_for(SimpleNamespace(lr=lr))
    # a fixed lr, or a positive learned one, is used as it is
    assert ProtocolParams(use_learned_lr=False).lr_for(SimpleNamespace(lr=lr)) == 0.01
    assert ProtocolParams().lr_for(SimpleNamespace(lr=0.02)) == 0.02
