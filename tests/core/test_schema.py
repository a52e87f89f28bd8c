"""The recipe JSON Schema as an editor uses it, and --set errors that name the override."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import TINY
from typer.testing import CliRunner

from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import load_recipe, parse_yaml
from mim4dd_kit.config.schema import MODELINE, recipe_json_schema
from mim4dd_kit.core.errors import RecipeError

runner = CliRunner()


@pytest.fixture(scope="module")
def schema():
    return recipe_json_schema()


def _errors(schema, recipe):
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(recipe)]


def test_a_valid_recipe_passes_and_shorthand_names_are_accepted(schema):
    assert _errors(schema, TINY) == []
    assert _errors(schema, {**TINY, "backbone": "mlp"}) == []
    for recipe in sorted(Path("recipes").glob("*.yaml")):  # YAML 1.2, as mdk reads them
        assert _errors(schema, parse_yaml(recipe.read_text())) == [], recipe


def test_a_misspelt_component_key_is_reported_as_unknown(schema):
    bad = {**TINY, "backbone": {"name": "convnet", "width": 8, "depht": 2}}
    (message,) = _errors(schema, bad)
    assert "'depht' was unexpected" in message
    best = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert list(best.absolute_path) == ["backbone"] and "depht" in best.message
    # a nested component (the regularizer's critic) too, and a misspelt plugin name
    nested = {**TINY, "regularizer": {"name": "mim4dd", "critic": {"name": "linear",
                                                                     "out_dm": 3}}}
    assert any("'out_dm' was unexpected" in m for m in _errors(schema, nested))
    assert any("'convnt' is not one of" in m
               for m in _errors(schema, {**TINY, "backbone": "convnt"}))


def test_every_default_is_in_the_schema(schema):
    props = schema["properties"]
    assert props["backbone"]["default"] == {"name": "convnet"}
    assert props["evaluators"]["default"] == [{"name": "train_from_scratch"}]
    assert props["synthetic"]["default"]["ipc"] == 10
    assert schema["$defs"]["Schedule"]["properties"]["milestones"]["default"] == []
    evaluator = next(b["then"] for b in schema["$defs"]["EvaluatorRef"]["else"]["allOf"]
                     if b["if"]["properties"]["name"]["const"] == "train_from_scratch")
    assert evaluator["properties"]["augmentation"]["default"] == {"name": "dsa"}


def test_schema_links_a_recipe_for_editors(tmp_path):
    recipe = tmp_path / "recipes" / "mine.yaml"
    recipe.parent.mkdir()
    recipe.write_text(f"{MODELINE}old.json\nname: mine\n")
    out = tmp_path / "schema" / "recipe.schema.json"
    res = runner.invoke(app, ["schema", "--out", str(out), "--link", str(recipe)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["title"] == "Recipe"
    assert recipe.read_text() == f"{MODELINE}../schema/recipe.schema.json\nname: mine\n"
    res = runner.invoke(app, ["schema", "--link", str(recipe)])
    assert res.exit_code == 2 and "--link needs --out" in res.stderr


def test_set_errors_name_the_override(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["synthetic.iteratons=100"])
    # the file the override applies to, then the override: no line of the file
    assert str(info.value) == (f"{path}: --set synthetic.iteratons=100: synthetic.iteratons: "
                               "unknown key (did you mean 'iterations'?)")
    with pytest.raises(RecipeError, match=r"yaml: --set backbone.depht=3: backbone.depht: unkn"):
        load_recipe(path, ["backbone.depht=3"])
    # a problem in the file itself still names its line
    path.write_text(yaml.safe_dump({**TINY, "seed": -1}, sort_keys=False))
    with pytest.raises(RecipeError, match=r"recipe.yaml:2: seed: "):
        load_recipe(path, ["synthetic.iterations=3"])
