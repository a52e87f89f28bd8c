"""The mdk command line through Typer's test runner."""

import json

import pytest
import torch
import yaml
from conftest import TINY
from safetensors.torch import save_file
from typer.testing import CliRunner

from mim4dd_kit.cli import app

runner = CliRunner()


def _recipe_file(tmp_path, **changes):
    data = {**TINY, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_validate_good_and_bad(tmp_path):
    good = _recipe_file(tmp_path)
    res = runner.invoke(app, ["validate", str(good)])
    assert res.exit_code == 0 and "valid" in res.stdout
    res = runner.invoke(app, ["validate", str(good), "--set", "backbone.depht=3"])
    assert res.exit_code == 2
    assert "backbone.depht: unknown key" in res.stderr
    assert "Traceback" not in res.output


def test_malformed_yaml_exits_nonzero_without_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [oops\n")
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 2 and "malformed YAML" in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_debug_shows_the_exception(tmp_path):
    res = runner.invoke(app, ["--debug", "validate", str(tmp_path / "missing.yaml")])
    assert res.exit_code != 0 and res.exception is not None
    assert "does not exist" in str(res.exception)


def test_list_plugins_json_is_one_document():
    res = runner.invoke(app, ["list-plugins", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    names = {(r["kind"], r["name"]) for r in rows}
    assert ("regularizers", "mim4dd") in names and ("backbones", "convnet_gap") in names
    res = runner.invoke(app, ["list-plugins", "--kind", "critics"])
    assert res.exit_code == 0 and "linear" in res.stdout and "convnet" not in res.stdout


def test_schema_is_json():
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["title"] == "Recipe"


@pytest.mark.slow
def test_run_show_evaluate(tmp_path):
    recipe = _recipe_file(tmp_path, evaluators=[])
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--json",
                              "--set", "synthetic.iterations=2"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["iterations"] == 2
    path = summary["synthetic"]
    res = runner.invoke(app, ["show", path, "--json"])
    shown = json.loads(res.stdout)
    assert shown["ipc"] == 3 and shown["dataset"]["name"] == "digits"
    res = runner.invoke(app, ["evaluate", path, "--models", "1", "--epochs", "5", "--json",
                              "--save"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)["evaluations"]["train_from_scratch"]
    assert ev["models"] == 1 and ev["epochs"] == 5 and 0 <= ev["accuracy_mean"] <= 100
    res = runner.invoke(app, ["show", path, "--json"])
    assert "train_from_scratch" in json.loads(res.stdout)["evaluations"]


def test_evaluate_foreign_file_needs_dataset(tmp_path):
    torch.manual_seed(0)
    f = tmp_path / "foreign.safetensors"
    save_file({"images": torch.randn(20, 1, 8, 8), "labels": torch.arange(10).repeat(2)}, str(f))
    res = runner.invoke(app, ["evaluate", str(f)])
    assert res.exit_code == 2 and "--dataset" in res.stderr
    res = runner.invoke(app, ["evaluate", str(f), "--dataset", "digits", "--models", "1",
                              "--epochs", "2", "--backbone", "mlp", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)["evaluations"]["train_from_scratch"]
    assert ev["backbone"]["name"] == "mlp"


def test_evaluate_refuses_non_set(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_text("not a tensor file")
    res = runner.invoke(app, ["evaluate", str(f)])
    assert res.exit_code == 2 and "safetensors" in res.stderr
