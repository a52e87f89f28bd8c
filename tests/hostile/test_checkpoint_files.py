"""Checkpoints are never unpickled: a crafted file in a run folder is refused with a clear
error before anything in it is used, and the state round-trips bit for bit without pickle."""

import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY
from safetensors.torch import save_file
from typer.testing import CliRunner

from mim4dd_kit.analysis.sweep import load_sweep
from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.core.errors import CheckpointError
from mim4dd_kit.run import statefile
from mim4dd_kit.run.engine import CHECKPOINT, LEGACY_CHECKPOINT, run

runner = CliRunner()


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(marker) -> bytes:
    return pickle.dumps({"fingerprint": "x", "images": _Payload(marker)})


def _recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**TINY, "synthetic": {**TINY["synthetic"], "iterations": 2}},
                                   sort_keys=False))
    return path


def test_the_payload_does_run_code_when_unpickled(tmp_path):
    marker = tmp_path / "proof"
    pickle.loads(_evil(marker))  # the test's own check that the payload is live
    assert marker.exists()


@pytest.mark.parametrize("name", [LEGACY_CHECKPOINT, CHECKPOINT])
def test_mdk_run_resume_refuses_a_pickle_checkpoint(tmp_path, name):
    recipe = _recipe_file(tmp_path)
    out, marker = tmp_path / "run", tmp_path / "marker"
    out.mkdir()
    (out / name).write_bytes(_evil(marker))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--resume", "--no-eval"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    message = " ".join(res.stderr.split())
    assert f"{name} is" in message or f"{name} is" in res.stderr.replace("\n", "")
    if name == LEGACY_CHECKPOINT:
        assert "pickle checkpoint" in message and "--overwrite" in message
    else:
        assert "not a readable checkpoint file" in message
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched


def test_mdk_sweep_resume_refuses_a_pickle_checkpoint(tmp_path):
    (tmp_path / "base.yaml").write_text(_recipe_file(tmp_path).read_text())
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "name": "sw",
                                     "grid": {"seed": [0]}}))
    out, marker = tmp_path / "out", tmp_path / "marker"
    (v,) = load_sweep(sweep).variants()
    for name in (LEGACY_CHECKPOINT, CHECKPOINT):
        folder = out / v.name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        (folder / name).write_bytes(_evil(marker))
        res = runner.invoke(app, ["sweep", str(sweep), "--out", str(out), "--resume"])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and name in res.stderr.replace("\n", "")
        assert not marker.exists()
        assert (folder / name).read_bytes() == _evil(marker)
        assert sorted(p.name for p in folder.iterdir()) == [name]


def _interrupted(tmp_path, **changes):
    recipe = validate_recipe({**TINY, **changes})
    out = tmp_path / "r"

    def stop(iteration, logs):
        if iteration == 3:  # after the checkpoint at iteration 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=out, progress=False, evaluate=False, callbacks=[stop])
    assert (out / CHECKPOINT).is_file() and not (out / LEGACY_CHECKPOINT).exists()
    return recipe, out


def test_a_checkpoint_of_another_recipe_is_refused_before_its_tensors_are_read(tmp_path):
    recipe, out = _interrupted(tmp_path)
    header = statefile.read_header(out / CHECKPOINT)
    # a tree that refers to a tensor the file lacks: reading it would fail loudly
    save_file({}, str(out / CHECKPOINT), metadata={**header, "fingerprint": "0" * 64,
                                                   "state": '{"images": {"$t": "9"}}'})
    with pytest.raises(CheckpointError, match="different recipe"):
        run(recipe, out=out, progress=False, evaluate=False, resume=True)


def test_a_checkpoint_with_a_wrong_shape_names_the_key(tmp_path):
    recipe, out = _interrupted(tmp_path)
    state = statefile.load_state(out / CHECKPOINT)
    header = statefile.read_header(out / CHECKPOINT)
    state["images"] = torch.zeros(2, 2)
    statefile.save_state(out / CHECKPOINT, state, {"fingerprint": header["fingerprint"]})
    before = (out / CHECKPOINT).read_bytes()
    with pytest.raises(CheckpointError, match=r"'images' must be a torch.float32 tensor of "
                                              r"shape \(30, 1, 8, 8\), got \(2, 2\)"):
        run(recipe, out=out, progress=False, evaluate=False, resume=True)
    assert (out / CHECKPOINT).read_bytes() == before
    del state["opt_img"]
    statefile.save_state(out / CHECKPOINT, {**state, "images": statefile.load_state(
        out / CHECKPOINT)["images"].new_zeros(30, 1, 8, 8)}, {"fingerprint": header[
            "fingerprint"]})
    with pytest.raises(CheckpointError, match=r"does not fit this run \(KeyError: 'opt_img'\)"):
        run(recipe, out=out, progress=False, evaluate=False, resume=True)


def test_state_round_trips_without_pickle(tmp_path):
    state = {
        "t": torch.arange(6, dtype=torch.float64).reshape(2, 3)[:, 1],  # a strided view
        "b": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
        "opt": {"state": {0: {"momentum_buffer": torch.ones(3)}},
                "param_groups": [{"params": [0], "betas": (0.9, 0.999), "foreach": None}]},
        "milestones": Counter({3: 1, 7: 2}),
        "py_rng": (3, tuple(range(625)), None),
        "np_rng": np.random.RandomState(4).get_state(),
        "floats": [0.1, 1 / 3, math.inf, -math.inf, 1e-310],
        "nested": {"$weird": {"$t": "not a tensor"}},
    }
    path = tmp_path / "s.safetensors"
    statefile.save_state(path, state, {"fingerprint": "f"})
    back = statefile.load_state(path)
    assert torch.equal(back["t"], state["t"]) and back["b"].dtype == torch.bool
    assert back["scalar"].shape == () and back["scalar"].item() == 2.5
    assert torch.equal(back["opt"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert isinstance(back["milestones"], Counter) and back["milestones"] == state["milestones"]
    assert back["py_rng"] == state["py_rng"]
    np_back = back["np_rng"]
    assert np_back[0] == "MT19937" and np.array_equal(np_back[1], state["np_rng"][1])
    assert np_back[1].dtype == np.uint32 and np_back[2:] == state["np_rng"][2:]
    assert back["floats"] == state["floats"]
    assert back["nested"] == {"$weird": {"$t": "not a tensor"}}
    with open(path, "rb") as f:
        assert b"\x80\x04" not in f.read(8)  # not a pickle


def test_an_unstorable_plugin_state_is_named(tmp_path):
    with pytest.raises(CheckpointError,
                       match=r"cannot store state\.loss\.net in a checkpoint: a builtins\.object"):
        statefile.save_state(tmp_path / "s", {"loss": {"net": object()}}, {})


@pytest.mark.parametrize("text", [
    '[1, 2]', '{"a": {"$t": 5}}', '{"a": {"$nd": {"dtype": "object", "shape": [1], '
    '"data": [1]}}}', '{"a": {"$float": "1e5"}}', '{"a": {"$dict": [[[1], 2]]}}',
    '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
])
def test_hand_made_state_trees_are_clear_errors(tmp_path, text):
    path = tmp_path / "s.safetensors"
    save_file({}, str(path), metadata={"format": statefile.FORMAT, "state": text})
    with pytest.raises(CheckpointError, match="is damaged"):
        statefile.load_state(path)
