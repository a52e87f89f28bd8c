import copy

import pytest

from mim4dd_kit.recipe import validate_recipe

TINY = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "dataset": {"name": "digits"},
    "synthetic": {"ipc": 3, "iterations": 6, "lr": 1.0, "batch_real": 24},
    "backbone": {"name": "convnet", "width": 8, "depth": 2},
    "dd_loss": {"name": "dm"},
    "augmentation": {"name": "dsa"},
    "evaluators": [],
    "output": {"checkpoint_every": 2},
}


@pytest.fixture
def tiny_recipe():
    """A validated recipe factory: ``tiny_recipe(**top_level_overrides)``."""

    def make(**changes):
        data = copy.deepcopy(TINY)
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return validate_recipe(data)

    return make
