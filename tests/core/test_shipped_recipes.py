"""Every recipe shipped in recipes/ passes validation (what `mdk validate` checks)."""

from pathlib import Path

import pytest

from mim4dd_kit.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert "quickstart" in names
    assert {f"fashion_mnist_ipc{n}_dm{m}" for n in (1, 10, 50) for m in ("", "_mim")} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem or path.stem == "quickstart"
