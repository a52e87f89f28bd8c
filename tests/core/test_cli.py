"""The mdk command line through Typer's test runner."""

import json

import pytest
import torch
import yaml
from helpers import TINY
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
    # a YAML component sets the network's parameters too
    res = runner.invoke(app, ["evaluate", str(f), "--dataset", "digits", "--models", "1",
                              "--epochs", "1", "--backbone", "{name: convnet, width: 8}",
                              "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)["evaluations"]["train_from_scratch"]
    assert ev["backbone"]["name"] == "convnet" and ev["backbone"]["width"] == 8
    res = runner.invoke(app, ["evaluate", str(f), "--dataset", "digits", "--models", "1",
                              "--backbone", "{name: convnet, widht: 8}"])
    assert res.exit_code == 2 and "widht" in res.stderr


def test_evaluate_refuses_non_set(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_text("not a tensor file")
    res = runner.invoke(app, ["evaluate", str(f)])
    assert res.exit_code == 2 and "safetensors" in res.stderr


def test_sweep_dry_run_lists_variants_and_bad_values_exit_2(tmp_path):
    base = _recipe_file(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: recipe.yaml\ngrid:\n  synthetic.lr: [0.5, 1.0]\n"
                     "  seed: [0, 1]\n")
    res = runner.invoke(app, ["sweep", str(sweep), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["values"] for r in rows] == [
        {"synthetic.lr": 0.5, "seed": 0}, {"synthetic.lr": 0.5, "seed": 1},
        {"synthetic.lr": 1.0, "seed": 0}, {"synthetic.lr": 1.0, "seed": 1}]
    assert all(r["status"] == "planned" for r in rows)
    assert not (tmp_path / "runs").exists() and base.exists()
    sweep.write_text("base: recipe.yaml\ngrid:\n  synthetic.lr: [0.5, -1.0]\n")
    res = runner.invoke(app, ["sweep", str(sweep), "--dry-run"])
    assert res.exit_code == 2 and "synthetic.lr" in res.stderr and "Traceback" not in res.output


def test_sweep_runs_and_prints_a_table(tmp_path):
    _recipe_file(tmp_path, synthetic={"ipc": 2, "iterations": 1, "batch_real": 8},
                 evaluators=[{"name": "train_from_scratch", "models": 1, "epochs": 1}])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: recipe.yaml\ngrid:\n  synthetic.lr: [0.5, 1.0]\n")
    res = runner.invoke(app, ["sweep", str(sweep), "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("| lr=")]
    assert len(lines) == 2 and all("±" in ln for ln in lines)
    assert (tmp_path / "sw" / "lr=0.5" / "synthetic.safetensors").is_file()
    assert (tmp_path / "sw" / "results.md").read_text().count("| lr=") == 2


def test_buffer_builds_once_and_refuses_other_losses(tmp_path, monkeypatch):
    monkeypatch.setenv("MDK_CACHE", str(tmp_path / "cache"))
    mtt = {"name": "mtt", "num_experts": 1, "max_start_epoch": 1, "expert_epochs": 1,
           "syn_steps": 1, "expert_batch": 512}
    path = _recipe_file(tmp_path, dd_loss=mtt, synthetic={"ipc": 2, "iterations": 1})
    first = runner.invoke(app, ["buffer", str(path), "--json"])
    assert first.exit_code == 0, first.output
    info = json.loads(first.stdout)
    assert info["trained"] == 1 and info["experts"] == 1 and info["epochs"] == 2
    assert info["path"].startswith(str(tmp_path / "cache"))
    again = json.loads(runner.invoke(app, ["buffer", str(path), "--json"]).stdout)
    assert again["trained"] == 0 and again["path"] == info["path"]
    res = runner.invoke(app, ["buffer", str(_recipe_file(tmp_path))])
    assert res.exit_code == 2 and "dd_loss is 'dm'" in res.stderr


def test_every_evaluators_headline_shows_in_the_table(tmp_path, monkeypatch):
    from mim4dd_kit import cli
    from mim4dd_kit.io.synthetic import save_synthetic

    monkeypatch.setattr(cli.out, "width", 200)  # no wrapped cells

    evaluations = {
        "train_from_scratch": {"accuracy_mean": 51.25, "accuracy_std": 0.5,
                               "accuracies": [50.75, 51.75], "models": 2, "epochs": 300},
        "cka": {"diagonal": [0.9, 0.7], "mean_diagonal": 0.8, "syn_accuracy": 44.0,
                "real_accuracy": 88.5, "epochs": 50, "real_epochs": 1,
                "headline": ["mean_diagonal", "syn_accuracy", "real_accuracy"]},
        "mi_estimate": {"mi_lower_bound": [1.0, 2.0], "mean_mi_lower_bound": 1.5,
                        "accuracy": 40.0, "epochs": 50, "critic_steps": 200,
                        "headline": ["mean_mi_lower_bound", "accuracy"]},
        "cross_arch": {"table": [{"backbone": "mlp", "accuracy_mean": 33.0,
                                  "accuracy_std": 1.0}], "models": 1, "epochs": 20},
    }
    path = save_synthetic(tmp_path / "s.safetensors", torch.randn(2, 1, 8, 8),
                          torch.tensor([0, 1]), metadata={"evaluations": evaluations})
    res = runner.invoke(app, ["show", str(path)])
    assert res.exit_code == 0, res.output
    text = res.stdout
    for shown in ("train_from_scratch acc %", "51.25 ± 0.50", "50.75, 51.75",
                  "2 nets × 300 ep", "cka mean_diagonal", "0.8", "cka real_accuracy",
                  "88.5", "real 1 ep", "mi_estimate mean_mi_lower_bound", "1.5",
                  "200 critic steps", "cross_arch/mlp acc %", "33.00 ± 1.00"):
        assert shown in text, shown


def test_schema_out_confirms_and_list_plugins_keeps_brackets(tmp_path, monkeypatch):
    out = tmp_path / "recipe.schema.json"
    res = runner.invoke(app, ["schema", "--out", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())
    assert "JSON Schema written to" in res.stdout and str(out) in res.stdout
    from mim4dd_kit.config.registry import PluginInfo, Registry

    infos = [PluginInfo("critics", "linear", "pkg", "1", "m:o", "one [fc-ReLU] head")]
    monkeypatch.setattr(Registry, "describe", lambda self, kind=None: infos)
    res = runner.invoke(app, ["list-plugins", "--kind", "critics"])
    assert res.exit_code == 0 and "[fc-ReLU]" in res.stdout


def test_evaluate_set_reaches_one_evaluator_and_refuses_others(tmp_path):
    from mim4dd_kit.cli import _with_evaluator_sets

    specs = _with_evaluator_sets(
        [{"name": "cka"}, {"name": "mi_estimate", "epochs": 3}],
        ["cka.backbone={name: convnet, width: 32}", "cka.real_epochs=1",
         "mi_estimate.critic_steps=5"])
    assert specs == [{"name": "cka", "backbone": {"name": "convnet", "width": 32},
                      "real_epochs": 1},
                     {"name": "mi_estimate", "epochs": 3, "critic_steps": 5}]
    path = tmp_path / "s.safetensors"
    from mim4dd_kit.io.synthetic import save_synthetic

    save_synthetic(path, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]),
                   metadata={"recipe": {"dataset": {"name": "digits"}}})
    res = runner.invoke(app, ["evaluate", str(path), "--set", "cka.real_epochs=1"])
    assert res.exit_code == 2 and "add others with --evaluator" in " ".join(
        res.stderr.split())
