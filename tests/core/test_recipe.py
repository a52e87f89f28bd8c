"""Recipe validation: good recipes pass; each kind of bad input names its key path."""

import textwrap

import pytest

from mim4dd_kit.config.recipe import load_recipe, parse_yaml
from mim4dd_kit.config.schema import recipe_json_schema
from mim4dd_kit.core.errors import RecipeError

GOOD = """\
name: test
seed: 1
dataset: {name: digits}
synthetic:
  ipc: 2
  iterations: 3
  lr: 1e-1
backbone:
  name: convnet
  width: 8
  depth: 2
dd_loss: dm
regularizer:
  name: mim4dd
  lambda: 0.8
  beta: 2.0
  critic: {name: linear, out_dim: 16}
evaluators:
  - {name: train_from_scratch, models: 1, epochs: 2}
"""


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_recipe_validates_with_yaml12_numbers(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.synthetic.lr == pytest.approx(0.1)  # 1e-1 is a float, not a string
    assert r.dd_loss.name == "dm" and r.backbone.params == {"width": 8, "depth": 2}
    assert r.regularizer.params["critic"] == {"name": "linear", "out_dim": 16}


def test_unknown_component_key_names_path_and_line(tmp_path):
    bad = GOOD.replace("  depth: 2", "  depht: 2")
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, bad))
    assert "r.yaml:11: backbone.depht: unknown key" in str(e.value)


@pytest.mark.parametrize("old,new,expected", [
    ("  depth: 2", "  depht: 2", "backbone.depht: unknown key (did you mean 'depth'?)"),
    ("iterations:", "iteratons:", "synthetic.iteratons: unknown key (did you mean "
     "'iterations'?)"),
    ("out_dim: 16", "out_dmi: 16", "regularizer.critic.out_dmi: unknown key (did you mean "
     "'out_dim'?)"),
    ("synthetic:", "synthethic:", "synthethic: unknown key (did you mean 'synthetic'?)"),
])
def test_unknown_key_names_the_closest_known_key(tmp_path, old, new, expected):
    assert old in GOOD
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, GOOD.replace(old, new, 1)))
    assert expected in str(e.value)


def test_unknown_key_far_from_every_known_key_gets_no_guess(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, GOOD.replace("  depth: 2", "  zzzzqqq: 2")))
    assert "backbone.zzzzqqq: unknown key" in str(e.value)
    assert "did you mean" not in str(e.value)


def test_nested_critic_parameter_error(tmp_path):
    bad = GOOD.replace("out_dim: 16", "out_dim: -3")
    with pytest.raises(RecipeError, match=r"r.yaml:17: regularizer\.critic\.out_dim"):
        load_recipe(_write(tmp_path, bad))


def test_beta_rule(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml:16: regularizer\.beta: must be > 1"):
        load_recipe(_write(tmp_path, GOOD.replace("beta: 2.0", "beta: 0.5")))


def test_typo_in_plugin_name_suggests(tmp_path):
    with pytest.raises(RecipeError, match=r"backbone\.name: .*did you mean 'convnet'"):
        load_recipe(_write(tmp_path, GOOD.replace("name: convnet", "name: convnt")))


def test_wrong_type_and_unknown_top_level_key(tmp_path):
    bad = GOOD.replace("ipc: 2", "ipc: two") + "extra_key: 1\n"
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, bad))
    msg = str(e.value)
    assert "r.yaml:5: synthetic.ipc" in msg and "extra_key: unknown key" in msg


def test_yaml11_booleans_stay_strings(tmp_path):
    # YAML 1.1 would turn `no` into False and fail the string field `name`
    r = load_recipe(_write(tmp_path, GOOD.replace("name: test", "name: no")))
    assert r.name == "no"
    with pytest.raises(RecipeError, match="r.yaml:2: seed"):
        load_recipe(_write(tmp_path, GOOD.replace("seed: 1", "seed: yes")))


def test_octal_looking_int_is_decimal():
    assert parse_yaml("a: 0012") == {"a": 12}


def test_malformed_yaml_gives_line(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml:\d+: malformed YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\nseed: 1\n"))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))


def test_overrides_apply_and_are_validated(tmp_path):
    p = _write(tmp_path, GOOD)
    r = load_recipe(p, ["synthetic.ipc=5", "backbone.width=4", "regularizer.lambda=0"])
    assert r.synthetic.ipc == 5 and r.backbone.params["width"] == 4
    assert r.regularizer.params["lambda"] == 0
    r = load_recipe(p, ["dd_loss.layer=-2"])  # shorthand `dd_loss: dm` becomes a mapping
    assert r.dd_loss.name == "dm" and r.dd_loss.params == {"layer": -2}
    with pytest.raises(RecipeError, match="synthetic.ipc"):
        load_recipe(p, ["synthetic.ipc=0"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(p, ["synthetic.ipc"])


def test_fingerprint_ignores_output_and_device(tmp_path):
    p = _write(tmp_path, GOOD)
    a = load_recipe(p)
    b = load_recipe(p, ["output.dir=elsewhere", "device=cpu"])
    c = load_recipe(p, ["seed=2"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_schema_lists_installed_plugins():
    schema = recipe_json_schema()
    names = [b["if"]["properties"]["name"]["const"]
             for b in schema["$defs"]["BackboneRef"]["else"]["allOf"]]
    assert "convnet" in names and "mlp" in names
    assert names == schema["$defs"]["BackboneRef"]["then"]["enum"]
