"""Runs end to end on digits: outputs, provenance, lambda = 0 equivalence, resume."""

import pytest
import torch
from helpers import assert_lambda_zero_is_exact, distilled, set_up_run

from mim4dd_kit.core.errors import RunError
from mim4dd_kit.io.synthetic import load_synthetic
from mim4dd_kit.run.engine import run

MIM = {"name": "mim4dd", "lambda": 0.8, "critic": {"name": "linear", "out_dim": 16}}


@pytest.mark.slow
def test_end_to_end_digits_beats_chance(tiny_recipe, tmp_path):
    recipe = tiny_recipe(
        synthetic={"ipc": 10, "iterations": 20},
        regularizer=MIM,
        evaluators=[{"name": "train_from_scratch", "models": 2, "epochs": 60}],
    )
    result = run(recipe, out=tmp_path / "run", progress=False)
    s = load_synthetic(result.synthetic_path)
    assert s.images.shape == (100, 1, 8, 8) and s.labels.bincount().tolist() == [10] * 10
    meta = s.metadata
    assert meta["iterations"] == 20 and meta["recipe"]["name"] == "tiny"
    assert meta["dataset"]["name"] == "digits" and len(meta["dataset"]["sha256"]) == 64
    keys = {c["key"]: c for c in meta["components"]}
    assert keys["regularizer.critics"]["name"] == "linear"
    assert keys["dd_loss"]["package"] == "mim4dd_kit"
    assert {"loss", "loss_dd", "loss_reg"} <= set(meta["final_losses"])
    ev = meta["evaluations"]["train_from_scratch"]
    assert len(ev["accuracies"]) == 2 and ev["accuracy_mean"] > 50.0  # chance is 10%
    lines = (tmp_path / "run" / "losses.jsonl").read_text().splitlines()
    assert len(lines) == 20
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_lambda_zero_reproduces_base_method_exactly(tiny_recipe, tmp_path):
    assert_lambda_zero_is_exact(lambda reg: tiny_recipe(regularizer=reg), tmp_path)


def test_resume_continues_from_checkpoint(tiny_recipe, tmp_path):
    straight = distilled(tiny_recipe(regularizer=MIM), tmp_path / "straight").images

    def interrupt(iteration, logs):
        if iteration == 5:
            raise KeyboardInterrupt

    recipe = tiny_recipe(regularizer=MIM)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "r", progress=False, callbacks=[interrupt])
    assert (tmp_path / "r" / "checkpoint.safetensors").exists()
    with pytest.raises(RunError, match="--resume"):
        run(recipe, out=tmp_path / "r", progress=False)
    seen = []
    result = run(recipe, out=tmp_path / "r", progress=False, resume=True,
                 callbacks=[lambda i, logs: seen.append(i)])
    assert seen == [5, 6]  # continued after the checkpoint at iteration 4
    assert torch.equal(load_synthetic(result.synthetic_path).images, straight)
    assert len((tmp_path / "r" / "losses.jsonl").read_text().splitlines()) == 6


def test_resume_with_another_recipe_is_refused(tiny_recipe, tmp_path):
    def interrupt(iteration, logs):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe(), out=tmp_path / "r", progress=False, callbacks=[interrupt])
    with pytest.raises(Exception, match="different recipe"):
        run(tiny_recipe(seed=5), out=tmp_path / "r", progress=False, resume=True)


def test_finished_run_is_not_overwritten(tiny_recipe, tmp_path):
    recipe = tiny_recipe(synthetic={"iterations": 1})
    first = run(recipe, out=tmp_path / "r", progress=False)
    before = first.synthetic_path.read_bytes()
    with pytest.raises(RunError, match="already exists"):
        run(recipe, out=tmp_path / "r", progress=False)
    assert first.synthetic_path.read_bytes() == before
    run(recipe, out=tmp_path / "r", progress=False, overwrite=True)


def test_noise_init_and_distillation_changes_images(tiny_recipe, tmp_path):
    recipe = tiny_recipe(synthetic={"init": "noise", "iterations": 2})
    images = distilled(recipe, tmp_path / "n").images
    assert images.shape == (30, 1, 8, 8)
    assert images.abs().mean() > 0.5  # standard normal start, not real data


@pytest.mark.slow
def test_example_plugin_backbone_from_a_recipe(tiny_recipe, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    x = torch.rand(60, 1, 28, 28)
    save_file({"images": x, "labels": torch.arange(60) % 3}, str(tmp_path / "d.safetensors"))
    recipe = tiny_recipe(
        dataset={"name": "tensor_file", "path": str(tmp_path / "d.safetensors")},
        backbone={"name": "convnet_gap", "width": 8, "depth": 2},
        regularizer=MIM,
        synthetic={"ipc": 2, "iterations": 2, "batch_real": 8},
    )
    s = load_synthetic(run(recipe, out=tmp_path / "r", progress=False).synthetic_path)
    assert s.images.shape == (6, 1, 28, 28)
    comps = {c["key"]: c for c in s.metadata["components"]}
    assert comps["backbone"]["package"] == "mdk_plugin_example"


def test_runs_draw_their_loss_curves(tiny_recipe, tmp_path):
    pytest.importorskip("matplotlib")
    from mim4dd_kit.core.plots import read_history

    run(tiny_recipe(), out=tmp_path, progress=False)
    png = tmp_path / "losses.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = read_history(tmp_path / "losses.jsonl")
    assert [h["iteration"] for h in history] == list(range(1, 7))
    assert all("loss_dd" in h for h in history)


def test_grad_clip_bounds_the_image_step(tiny_recipe, tmp_path):
    def first_step(clip):
        r = set_up_run(tiny_recipe(synthetic={"grad_clip": clip, "momentum": 0.0}),
                       tmp_path / str(clip))
        before = r.syn.images.detach().clone()
        torch.manual_seed(0)
        r.step(0)
        return r, (r.syn.images.detach() - before).norm().item()

    free, moved = first_step(None)
    raw = free.syn.images.grad.norm().item()
    clip = raw / 10
    clipped, moved_clipped = first_step(clip)
    lr = clipped.recipe.synthetic.lr
    # the gradient the optimiser used is the clipped one: norm `clip`, same direction
    assert clipped.syn.images.grad.norm().item() == pytest.approx(clip, rel=1e-4)
    torch.testing.assert_close(clipped.syn.images.grad * (raw / clip), free.syn.images.grad,
                               rtol=1e-4, atol=1e-7)
    assert moved == pytest.approx(lr * raw, rel=1e-4)
    assert moved_clipped == pytest.approx(lr * clip, rel=1e-4)
    # a bound above the norm changes nothing
    loose, moved_loose = first_step(raw * 2)
    assert moved_loose == pytest.approx(moved, rel=1e-6)
