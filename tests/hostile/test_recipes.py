"""Hostile or careless recipes: every one is a RecipeError / DataError naming the file,
line and key, bounded in size, never an internal error."""

import time
import tracemalloc

import pytest
import yaml
from helpers import TINY
from typer.testing import CliRunner

from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import MAX_YAML_VALUES, load_recipe, parse_yaml, validate_recipe
from mim4dd_kit.core.errors import DataError, RecipeError

runner = CliRunner()


def _file(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def _tiny_text(**changes):
    data = {**TINY, **changes}
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize("key, value, message", [
    ("synthetic.lr", ".inf", "synthetic.lr: Input should be a finite number"),
    ("synthetic.lr", ".nan", "synthetic.lr: Input should be a finite number"),
    ("regularizer.lambda", ".inf", "regularizer.lambda: Input should be a finite number"),
    ("regularizer.beta", "-.inf", "regularizer.beta: Input should be a finite number"),
    ("synthetic.ipc", "true", "synthetic.ipc: must be a number, not true/false"),
    ("seed", "false", "seed: must be a number, not true/false"),
    ("backbone.width", "true", "backbone.width: must be a number, not true/false"),
    ("output.file", "../../x.safetensors", "output.file: must be a plain file name"),
    ("output.file", "/tmp/x.safetensors", "output.file: must be a plain file name"),
    ("output.file", ".hidden", "output.file: must be a plain file name"),
])
def test_bad_numbers_and_paths_name_the_key(tmp_path, key, value, message):
    path = _file(tmp_path, _tiny_text(regularizer={"name": "mim4dd"}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [f"{key}={value}"])
    assert message in str(err.value) and str(path) in str(err.value)
    res = runner.invoke(app, ["validate", str(path), "--set", f"{key}={value}"])
    assert res.exit_code == 2 and message in " ".join(res.stderr.split())
    assert "Traceback" not in res.output and "internal error" not in res.output


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    text = _tiny_text() + "seed: 3\n"
    line = text.count("\n")
    path = _file(tmp_path, text)
    with pytest.raises(RecipeError, match=rf"r\.yaml:{line}: duplicate key 'seed'"):
        load_recipe(path)
    nested = "name: t\ndataset: {name: digits}\nsynthetic:\n  ipc: 2\n  ipc: 3\n"
    with pytest.raises(RecipeError, match=r"r\.yaml:5: duplicate key 'ipc'"):
        load_recipe(_file(tmp_path, nested))


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"name: t\ndataset: {{name: digits}}\nsynthetic:\n  lr: *a{levels - 1}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_a_short_error_in_bounded_memory(tmp_path, levels):
    path = _file(tmp_path, _bomb(levels))
    assert path.stat().st_size < 1000  # 9 levels: 9^9 = 387 million strings expanded
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert f"expands to more than {MAX_YAML_VALUES:,} values" in str(err.value)
    assert len(str(err.value)) < 300 and peak < 20e6 and time.perf_counter() - t0 < 10


def test_a_large_value_in_a_typed_field_is_shown_short(tmp_path):
    # 3 levels (729 strings) pass the size check; the type error must not print them all
    path = _file(tmp_path, _bomb(3))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    (lr,) = [p for p in str(err.value).split("; ") if "synthetic.lr" in p]
    assert "Input should be a valid number" in lr and len(lr) < 300 + len(str(path))


def test_deep_nesting_and_self_reference_are_clear_errors(tmp_path):
    deep = "name: t\nx: " + "[" * 3000 + "]" * 3000 + "\n"
    with pytest.raises(RecipeError, match="nested more than 50 levels deep"):
        load_recipe(_file(tmp_path, deep))
    selfref = "name: t\nx: &a [1, *a]\n"
    with pytest.raises(RecipeError, match="nested more than 50 levels deep"):
        load_recipe(_file(tmp_path, selfref))


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    with pytest.raises(RecipeError, match="at most 1,000,000"):
        parse_yaml("a: " + "x" * 1_000_001, "big.yaml")


def test_a_root_that_does_not_exist_is_an_error(tmp_path):
    from mim4dd_kit.config.registry import default_registry

    recipe = validate_recipe({**TINY, "dataset": {"name": "fashion_mnist",
                                                  "root": str(tmp_path / "nope")}})
    with pytest.raises(DataError, match=r"dataset\.root .*nope does not exist"):
        default_registry().build("datasets", recipe.dataset).load()


def test_sizes_are_checked_before_allocating(tmp_path):
    text = _tiny_text(synthetic={"ipc": 1, "iterations": 1, "init": "noise"}).replace(
        "ipc: 1", "ipc: 1e9")
    path = _file(tmp_path, text)
    tracemalloc.start()
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.exit_code == 2, res.output
    message = " ".join(res.stderr.split())
    assert "synthetic.ipc asks for 10,000,000,000 images of 1x8x8" in message
    assert "lower synthetic.ipc" in message and peak < 500e6
    assert not (tmp_path / "o").exists()


def test_a_backbone_too_deep_for_the_images_is_a_clear_error(tmp_path):
    path = _file(tmp_path, _tiny_text(backbone={"name": "convnet", "width": 8, "depth": 6}))
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "internal error" not in res.output
    assert "depth 6 is too deep for 8x8 images" in " ".join(res.stderr.split())
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**62), str(2**70)])
def test_seeds_out_of_range_name_the_key(tmp_path, seed):
    path = _file(tmp_path, _tiny_text())
    with pytest.raises(RecipeError, match=r"seed: Input should be (greater|less) than"):
        load_recipe(path, [f"seed={seed}"])
