"""The held-out validation split: deterministic, disjoint from distillation, scored."""

import json

import pytest
import torch
import yaml
from helpers import TINY, merged, set_up_run
from safetensors.torch import save_file
from typer.testing import CliRunner

from mim4dd_kit.api import DataInfo, EvalRequest, RealData
from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import DataError
from mim4dd_kit.dd_losses.mtt import MTT
from mim4dd_kit.dd_losses.mtt.buffers import buffer_key
from mim4dd_kit.evaluators.train_from_scratch import TrainFromScratch
from mim4dd_kit.run.evaluate import evaluate

C, PER_CLASS, SIZE = 4, 12, 8


def _unique_images(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 8, 8) images, pairwise different (random normals)."""
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _data() -> RealData:
    info = DataInfo("toy", C, 1, (SIZE, SIZE), (0.0,), (1.0,), tuple("abcd"), False)
    labels = torch.arange(C).repeat(PER_CLASS)  # interleaved classes
    return RealData(info, _unique_images(C * PER_CLASS, 0), labels,
                    _unique_images(2 * C, 1), torch.arange(C).repeat(2),
                    {"name": "toy", "split": "train", "size": C * PER_CLASS, "sha256": "x"})


def _rows_in(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For every image of ``a``, whether an identical image is in ``b``."""
    return (a.flatten(1)[:, None] == b.flatten(1)[None]).all(-1).any(1)


def test_hold_out_is_deterministic_disjoint_and_complete():
    data = _data()
    a, b = data.hold_out(3, seed=5), data.hold_out(3, seed=5)
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.val_labels, b.val_labels)
    assert torch.equal(torch.bincount(a.val_labels, minlength=C), torch.full((C,), 3))
    assert torch.equal(torch.bincount(a.train_labels, minlength=C),
                       torch.full((C,), PER_CLASS - 3))
    assert not _rows_in(a.val_images, a.train_images).any()
    # every original training image is in exactly one of the two splits, with its label
    whole = torch.cat([a.train_images, a.val_images])
    assert _rows_in(data.train_images, whole).all() and len(whole) == len(data.train_images)
    for x, y in ((a.train_images, a.train_labels), (a.val_images, a.val_labels)):
        src = (x.flatten(1)[:, None] == data.train_images.flatten(1)[None]).all(-1)
        assert torch.equal(data.train_labels[src.float().argmax(1)], y)
    other = data.hold_out(3, seed=6)
    assert not torch.equal(a.val_images, other.val_images)
    # the run's random stream is neither read nor moved by the choice
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    c = data.hold_out(3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(c.val_images, a.val_images)
    v = a.identity["validation"]
    assert (v["per_class"], v["seed"], v["size"]) == (3, 5, 3 * C)
    assert a.identity["size"] == C * (PER_CLASS - 3)
    assert a.identity["sha256"] == data.identity["sha256"]
    assert v["indices_sha256"] != other.identity["validation"]["indices_sha256"]


def test_hold_out_refuses_classes_it_would_empty():
    with pytest.raises(DataError, match="validation.per_class is 12"):
        _data().hold_out(PER_CLASS, seed=0)
    with pytest.raises(DataError, match="holds no validation split"):
        _data().eval_split("validation")


def _toy_file(tmp_path):
    d = _data()
    path = tmp_path / "toy.safetensors"
    save_file({"train_images": d.train_images, "train_labels": d.train_labels,
               "test_images": d.test_images, "test_labels": d.test_labels}, str(path))
    return path


def test_distillation_never_reads_the_held_out_images(tmp_path):
    recipe = validate_recipe(merged(TINY, {
        "dataset": {"name": "tensor_file", "path": str(_toy_file(tmp_path))},
        "validation": {"per_class": 3, "seed": 1},
        "synthetic": {"ipc": 4, "iterations": 4, "batch_real": 8},
    }))
    r = set_up_run(recipe, tmp_path / "run")
    val = r.data.val_images
    assert val is not None and len(val) == 3 * C
    assert r.ctx.data is r.data  # what every loss (and MTT's experts) reads
    assert not _rows_in(r.data.train_images, val).any()
    assert not _rows_in(r.syn.images.detach(), val).any()  # initialisation
    drawn = []
    sample = r.data.sample_per_class
    r.data.sample_per_class = lambda n, generator=None: (
        lambda out: (drawn.append(out[0]), out)[1])(sample(n, generator))
    for it in range(4):
        r.step(it)
    assert drawn and not _rows_in(torch.cat(drawn), val).any()
    # expert trajectories of a held-out run are cached apart from the whole-split ones
    whole = set_up_run(validate_recipe(merged(TINY, {
        "dataset": {"name": "tensor_file", "path": str(_toy_file(tmp_path))},
        "synthetic": {"ipc": 4, "iterations": 4, "batch_real": 8}})), tmp_path / "whole")
    params = MTT.Params()
    assert buffer_key(r.ctx, params) != buffer_key(whole.ctx, params)


def test_train_from_scratch_scores_the_split_it_is_asked_for():
    # validation labels are the truth; the test split is the same images with wrong labels
    held = _data().hold_out(3, seed=0)
    held.test_images = held.val_images.clone()
    held.test_labels = (held.val_labels + 1) % C
    request = EvalRequest(held.val_images, held.val_labels, None, held, torch.device("cpu"),
                          0, None, None)
    reg = default_registry()
    common = {"models": 2, "epochs": 60, "lr": 0.05, "augmentation": None,
              "backbone": {"name": "mlp", "width": 64}}
    val = TrainFromScratch(TrainFromScratch.Params(**common, split="validation"))
    test = TrainFromScratch(TrainFromScratch.Params(**common))
    rv, rt = val.evaluate(request, reg), test.evaluate(request, reg)
    assert rv["split"] == "validation" and rv["test_size"] == 3 * C
    assert rt["split"] == "test"
    assert rv["accuracy_mean"] == 100.0 and rt["accuracy_mean"] == 0.0


def test_mdk_evaluate_rebuilds_the_split_from_the_file(tmp_path):
    recipe = merged(TINY, {
        "validation": {"per_class": 20, "seed": 3},
        "synthetic": {"iterations": 2},
        "evaluators": [{"name": "train_from_scratch", "models": 2, "epochs": 3,
                        "split": "validation"}],
    })
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    set_file = out / "synthetic.safetensors"
    from mim4dd_kit.io.synthetic import load_synthetic

    meta = load_synthetic(set_file).metadata
    during = meta["evaluations"]["train_from_scratch"]
    assert during["split"] == "validation" and during["test_size"] == 200
    assert meta["dataset"]["validation"]["per_class"] == 20
    res = CliRunner().invoke(app, ["evaluate", str(set_file), "--split", "validation",
                                   "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)["evaluations"]["train_from_scratch"]
    assert again["split"] == "validation"
    assert again["accuracies"] == during["accuracies"]
    test = evaluate(set_file, device="cpu")["evaluations"]["train_from_scratch"]
    assert test["split"] == "validation"  # the recipe's own evaluator, as recorded
    res = CliRunner().invoke(app, ["evaluate", str(set_file), "--split", "test",
                                   "--device", "cpu", "--json"])
    assert json.loads(res.stdout)["evaluations"]["train_from_scratch"]["test_size"] == 360


def test_validation_is_optional_and_keeps_old_fingerprints(tiny_recipe):
    plain = tiny_recipe()
    assert plain.validation is None
    held = tiny_recipe(validation={"per_class": 5})
    assert held.validation.seed == 0 and plain.fingerprint() != held.fingerprint()
    # a recipe without the field hashes as recipes did before it existed
    import hashlib

    d = plain.to_dict()
    for key in ("output", "device", "performance", "loggers", "validation"):
        d.pop(key, None)
    if d["synthetic"].get("formation") == 1:  # the other optional field's default
        del d["synthetic"]["formation"]
    old = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.fingerprint() == old
