"""Sweeps: grid expansion, overrides, up-front validation, runs, table and resume."""

import json

import pytest
import torch
import yaml
from helpers import MIM, TINY, merged

from mim4dd_kit.analysis import sweep as sweep_mod
from mim4dd_kit.analysis.sweep import format_table, format_value, load_sweep, run_sweep
from mim4dd_kit.core.errors import RecipeError
from mim4dd_kit.io.synthetic import load_synthetic, save_synthetic

# the suite's tiny recipe, smaller still, with MIM4DD and a 1-network evaluation
BASE = merged(TINY, {
    "synthetic": {"ipc": 2, "iterations": 3, "batch_real": 8},
    "regularizer": {**MIM, "beta": 2.0},
    "evaluators": [{"name": "train_from_scratch", "models": 1, "epochs": 2}],
    "output": {"checkpoint_every": 0},
})


def _write(tmp_path, sweep: dict, base: dict | None = None):
    (tmp_path / "recipes").mkdir(exist_ok=True)
    (tmp_path / "recipes" / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    path = tmp_path / "recipes" / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}, sort_keys=False))
    return path


def test_expansion_order_names_and_overrides(tmp_path):
    path = _write(tmp_path, {
        "name": "lam",
        "set": ["synthetic.iterations=2", "regularizer.strict_beta=false"],
        "grid": {"regularizer.lambda": [0.4, 0.8], "regularizer.beta": [0.5, 2.0],
                 "regularizer.critic": [{"name": "identity"}, {"name": "mlp", "hidden": 8}]},
    })
    s = load_sweep(path)
    assert s.name == "lam" and s.base == (tmp_path / "recipes" / "base.yaml").resolve()
    vs = s.variants()
    assert len(vs) == 8
    # cartesian product in the order written: the last key varies fastest
    assert [v.name for v in vs[:3]] == [
        "lambda=0.4-beta=0.5-critic=identity",
        "lambda=0.4-beta=0.5-critic=mlp.hidden_8",
        "lambda=0.4-beta=2-critic=identity",
    ]
    assert vs[-1].name == "lambda=0.8-beta=2-critic=mlp.hidden_8"
    assert vs[1].values == {"regularizer.lambda": 0.4, "regularizer.beta": 0.5,
                            "regularizer.critic": {"name": "mlp", "hidden": 8}}
    assert vs[1].overrides[:2] == ["synthetic.iterations=2", "regularizer.strict_beta=false"]
    # the resolved recipes carry the set and grid values, and everything else of the base
    r = vs[1].recipe
    assert r.synthetic.iterations == 2 and r.synthetic.ipc == 2
    reg = r.regularizer.params
    assert reg["lambda"] == 0.4 and reg["beta"] == 0.5 and reg["strict_beta"] is False
    assert r.regularizer.params["critic"] == {"name": "mlp", "hidden": 8}
    assert r.name == "lam.lambda_0.4-beta_0.5-critic_mlp.hidden_8"
    assert len({v.recipe.fingerprint() for v in vs}) == 8


def test_value_formatting_is_filesystem_safe():
    assert format_value(2.0) == "2" and format_value(0.4) == "0.4" and format_value(1e-5) == "1e-05"
    assert format_value(True) == "true" and format_value(None) == "null"
    assert format_value({"name": "linear", "out_dim": 64}) == "linear.out_dim_64"
    assert format_value([1, 2]) == "1_2"


def test_bad_grid_value_fails_before_anything_runs(tmp_path, monkeypatch):
    path = _write(tmp_path, {"grid": {"regularizer.beta": [2.0, 0.5]}})  # strict_beta on

    def never(*a, **k):
        raise AssertionError("nothing may run")

    monkeypatch.setattr("mim4dd_kit.run.engine.run", never)
    with pytest.raises(RecipeError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert "variant beta=0.5" in msg and "regularizer.beta" in msg and "> 1" in msg
    assert not (tmp_path / "runs").exists()


def test_sweep_file_errors_name_the_file_and_key(tmp_path):
    path = _write(tmp_path, {"grid": {"synthetic.ipc": [1]}, "grdi": {}})
    with pytest.raises(RecipeError, match=r"s\.yaml:\d+: grdi: unknown key|s\.yaml:\d+: grdi"):
        load_sweep(path)
    path = _write(tmp_path, {"grid": {"synthetic.ipc": []}})
    with pytest.raises(RecipeError, match=r"s\.yaml:\d+: grid: .*empty"):
        load_sweep(path)
    path = _write(tmp_path, {"grid": {"synthetic.ipcc": [1]}})
    with pytest.raises(RecipeError, match="synthetic.ipcc"):
        load_sweep(path)
    (tmp_path / "recipes" / "s.yaml").write_text("base: missing.yaml\ngrid: {seed: [1]}\n")
    with pytest.raises(RecipeError, match="missing.yaml"):
        load_sweep(tmp_path / "recipes" / "s.yaml")


def test_dry_run_plans_without_running(tmp_path):
    s = load_sweep(_write(tmp_path, {"grid": {"seed": [0, 1]}}))
    rows = run_sweep(s, out_dir=tmp_path / "out", dry_run=True, progress=False)
    assert [r["status"] for r in rows] == ["planned", "planned"]
    assert not (tmp_path / "out").exists()


def test_two_variant_run_writes_sets_and_table_then_resume_skips(tmp_path, monkeypatch):
    path = _write(tmp_path, {"name": "tinysweep", "grid": {"regularizer.lambda": [0.0, 0.8]}})
    s = load_sweep(path)
    out = tmp_path / "out"
    rows = run_sweep(s, out_dir=out, progress=False)
    assert [r["variant"] for r in rows] == ["lambda=0", "lambda=0.8"]
    assert [r["status"] for r in rows] == ["ran", "ran"]
    for r, lam in zip(rows, (0.0, 0.8), strict=True):
        meta = load_synthetic(r["path"]).metadata
        assert r["path"] == str(out / r["variant"] / "synthetic.safetensors")
        assert meta["recipe"]["regularizer"]["lambda"] == lam
        acc = meta["evaluations"]["train_from_scratch"]["accuracy_mean"]
        assert r["accuracy"]["train_from_scratch"]["mean"] == acc
        assert r["iterations"] == 3 and "loss" in r["final_losses"]
    assert rows[0]["final_losses"]["loss_reg"] == 0.0 and rows[1]["final_losses"]["loss_reg"] > 0
    table = (out / "results.md").read_text()
    assert "| variant | regularizer.lambda | train_from_scratch acc % |" in table
    for r in rows:
        acc = r["accuracy"]["train_from_scratch"]
        assert f"| {r['variant']} |" in table and f"{acc['mean']:.2f} ± {acc['std']:.2f}" in table
        assert acc["budget"].startswith("protocol mim4dd × ") and f"({acc['budget']})" in table
    assert json.loads((out / "results.json").read_text()) == rows
    assert format_table(rows, "json") == json.dumps(rows, indent=2)

    # resume: both sets are finished and evaluated, so nothing runs again
    def never(*a, **k):
        raise AssertionError("a finished variant was run again")

    monkeypatch.setattr("mim4dd_kit.run.engine.run", never)
    again = run_sweep(s, out_dir=out, resume=True, progress=False)
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    # without resume an existing finished variant is an error, never overwritten
    monkeypatch.undo()
    with pytest.raises(Exception, match="already exists"):
        run_sweep(s, out_dir=out, progress=False)


def test_resume_refuses_a_set_from_another_recipe(tmp_path):
    s = load_sweep(_write(tmp_path, {"grid": {"seed": [0]}}))
    other = load_sweep(_write(tmp_path, {"grid": {"seed": [0]}, "set": ["synthetic.lr=0.5"]}))
    v = other.variants()[0]
    final = tmp_path / "out" / "seed=0" / "synthetic.safetensors"
    save_synthetic(final, torch.zeros(20, 1, 8, 8), torch.arange(20) % 10, None,
                   {"recipe_fingerprint": v.recipe.fingerprint(), "evaluations": {"x": {}}})
    with pytest.raises(sweep_mod.RunError, match="different recipe"):
        run_sweep(s, out_dir=tmp_path / "out", resume=True, progress=False)
