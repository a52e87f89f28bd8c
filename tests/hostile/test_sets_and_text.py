"""Untrusted synthetic sets and text: non-finite or empty sets are refused, metadata of
the wrong JSON type is a clear error, huge labels cost no memory, terminal output carries
no escape sequences or Rich markup, Markdown reports carry no HTML, stored evaluations are
kept unless --overwrite, and a plugin's crash names the plugin."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from mim4dd_kit.analysis.report import build_report
from mim4dd_kit.cli import app
from mim4dd_kit.io.synthetic import PREFIX, load_synthetic, save_synthetic, update_metadata
from mim4dd_kit.run.evaluate import evaluate

runner = CliRunner()
ESC = "\x1b"


def _digits_set(path, meta=None, images=None, lr=None, labels=None):
    torch.manual_seed(0)
    images = torch.randn(20, 1, 8, 8) if images is None else images
    labels = torch.arange(10).repeat(2) if labels is None else labels
    recipe = {"name": "t", "seed": 0, "dataset": {"name": "digits"},
              "backbone": {"name": "mlp", "width": 16}, "evaluators": [
                  {"name": "train_from_scratch", "models": 1, "epochs": 1}]}
    return save_synthetic(path, images, labels, lr, {"recipe": recipe, **(meta or {})})


@pytest.mark.parametrize("change, message", [
    ({"images": "nan"}, "'images' holds 1 NaN/Inf value(s)"),
    ({"images": "inf"}, "'images' holds 1 NaN/Inf value(s)"),
    ({"lr": math.nan}, "the learned 'lr' is nan"),
    ({"lr": -0.1}, "the learned 'lr' is -0.1"),
])
def test_non_finite_sets_are_refused_and_not_saved(tmp_path, change, message):
    images = torch.randn(20, 1, 8, 8)
    if "images" in change:
        images[3, 0, 2, 2] = float(change["images"])
    path = _digits_set(tmp_path / "s.safetensors", images=images, lr=change.get("lr"))
    before = path.read_bytes()
    res = runner.invoke(app, ["evaluate", str(path), "--save"])
    assert res.exit_code == 2 and message in " ".join(res.stderr.split()), res.output
    assert str(path) in res.stderr.replace("\n", "")
    assert path.read_bytes() == before


def test_an_empty_set_is_refused(tmp_path):
    path = tmp_path / "e.safetensors"
    save_file({"images": torch.zeros(0, 1, 8, 8), "labels": torch.zeros(0, dtype=torch.long)},
              str(path))
    for cmd in (["show", str(path)], ["evaluate", str(path), "--dataset", "digits"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2 and "holds no images" in res.stderr, res.output


@pytest.mark.parametrize("key, value, message", [
    ("recipe", "x", "metadata entry 'recipe' must be an object, got str"),
    ("evaluations", [1], "metadata entry 'evaluations' must be an object, got list"),
    ("evaluations", {"a": {"accuracy_mean": "high"}},
     "'evaluations.a.accuracy_mean' must be an integer or a number, got str"),
    ("components", [3], "metadata entry 'components.0' must be an object, got int"),
    ("dataset", {"num_classes": "x"}, None),  # unread sub-keys stay, num_classes checked
    ("final_losses", {"loss": "low"}, "'final_losses.loss' must be an integer or a number"),
])
def test_metadata_of_the_wrong_type_is_a_clear_error(tmp_path, key, value, message):
    path = tmp_path / "s.safetensors"
    save_file({"images": torch.randn(20, 1, 8, 8), "labels": torch.arange(10).repeat(2)},
              str(path), metadata={PREFIX + key: json.dumps(value)})
    if message is None:
        assert load_synthetic(path).num_classes == 10
        return
    for cmd in (["show", str(path)], ["evaluate", str(path), "--dataset", "digits"],
                ["compare", str(path)], ["report", str(path), "--out",
                                         str(tmp_path / "r.html")]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, (cmd, res.output)
        assert message in " ".join(res.stderr.split()) and "internal error" not in res.output


def test_a_huge_label_costs_no_memory(tmp_path):
    path = tmp_path / "s.safetensors"
    labels = torch.arange(10).repeat(2)
    labels[0] = 2**40
    save_file({"images": torch.randn(20, 1, 8, 8), "labels": labels}, str(path))
    res = runner.invoke(app, ["show", str(path), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["classes"] == 11
    res = runner.invoke(app, ["evaluate", str(path), "--dataset", "digits"])
    assert res.exit_code == 2 and "labels go up to 1099511627776" in res.stderr
    assert load_synthetic(path).ipc() == 2


HOSTILE = f"{ESC}]0;pwned{ESC}\\{ESC}[2J[/bold][link=http://x]click[/link]<script>x()</script>"


def test_metadata_reaches_the_terminal_inert(tmp_path):
    path = _digits_set(tmp_path / "s.safetensors", meta={"note": HOSTILE, HOSTILE: 1})
    res = runner.invoke(app, ["show", str(path)])
    assert res.exit_code == 0, res.output
    assert ESC not in res.output and "[/bold]" in res.output and "[link=http://x]" in res.output
    res = runner.invoke(app, ["compare", str(path)])
    assert res.exit_code == 0 and ESC not in res.output


def test_an_error_message_with_markup_and_escapes_prints_literally(tmp_path):
    path = tmp_path / f"[bold]x{ESC}[31m.safetensors"
    res = runner.invoke(app, ["show", str(path)])
    assert res.exit_code == 2 and ESC not in res.output
    assert "[bold]x[31m.safetensors does not exist" in res.stderr


def test_list_plugins_and_internal_errors_escape_text(monkeypatch, capsys):
    from mim4dd_kit.cli import _guard
    from mim4dd_kit.config import registry as reg_mod

    real = reg_mod.Registry.describe

    def describe(self, kind=None):
        infos = real(self, kind)
        import dataclasses
        return [dataclasses.replace(infos[0], description=HOSTILE, error=None),
                dataclasses.replace(infos[1], error=f"[/bold]{ESC}[2J boom"), *infos[2:]]

    monkeypatch.setattr(reg_mod.Registry, "describe", describe)
    res = runner.invoke(app, ["list-plugins"])
    assert res.exit_code == 0, res.output
    import re
    assert ESC not in res.output, [res.output[m.start() - 20:m.start() + 10]
                                   for m in re.finditer(ESC, res.output)]
    assert "BROKEN:" in res.output and "[/bold]" in res.output and "boom" in res.output

    @_guard
    def crash():
        raise RuntimeError(f"[/bold] oops {ESC}[2J")

    from typer import Exit
    capsys.readouterr()
    with pytest.raises(Exit) as exited:
        crash()
    assert exited.value.exit_code == 1
    printed = capsys.readouterr().err
    assert "internal error: RuntimeError: [/bold] oops [2J" in printed and ESC not in printed


def test_a_plugin_crash_names_the_plugin_and_package(tmp_path, monkeypatch):
    import yaml
    from helpers import TINY

    from mim4dd_kit.config.registry import default_registry
    plugin = default_registry().load("backbones", "convnet_gap")
    scope = {"__name__": plugin.__module__}
    exec("def broken(self, *a, **k):\n    raise ZeroDivisionError('[/bold] inside')\n", scope)
    monkeypatch.setattr(plugin, "__init__", scope["broken"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "backbone": {"name": "convnet_gap", "width": 8,
                                                           "depth": 2}}))
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "o"), "--no-eval"])
    assert res.exit_code == 1
    message = " ".join(res.stderr.split())
    assert "error in plugin 'convnet_gap' (backbones) from package mdk-plugin-example" in \
        message.replace("mdk_plugin_example", "mdk-plugin-example")
    assert "ZeroDivisionError: [/bold] inside" in message and "Traceback" not in res.output


def test_markdown_reports_carry_no_html(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = _digits_set(run / "synthetic.safetensors")
    meta = load_synthetic(path).metadata
    recipe = {**meta["recipe"], "name": "<img src=x onerror=alert(1)>"}
    update_metadata(path, recipe=recipe,
                    evaluations={"<script>alert(1)</script>": {"accuracy_mean": 1.0}})
    page = build_report(run, markdown=True).path
    text = page.read_text()
    # outside code fences (where Markdown shows text literally) no tag survives
    import re
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    assert "<img" not in prose and "<script" not in prose
    assert prose.startswith("# &lt;img src=x onerror=alert(1)&gt;\n")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in prose


def test_evaluate_save_keeps_a_stored_evaluation_unless_overwrite(tmp_path):
    path = _digits_set(tmp_path / "s.safetensors")
    stored = {"train_from_scratch": {"accuracy_mean": 72.78, "accuracy_std": 0.1,
                                     "epochs": 50}}
    update_metadata(path, evaluations=stored)
    before = path.read_bytes()
    res = runner.invoke(app, ["evaluate", str(path), "--save"])
    assert res.exit_code == 2 and "already holds evaluation(s) 'train_from_scratch'" in \
        " ".join(res.stderr.split()) and "--overwrite" in res.stderr
    assert path.read_bytes() == before
    out = evaluate(path, save=True, overwrite=True)
    assert load_synthetic(path).metadata["evaluations"]["train_from_scratch"] == \
        out["evaluations"]["train_from_scratch"]
