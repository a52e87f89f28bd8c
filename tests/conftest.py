"""Fixtures shared by the test modules; plain helpers are in tests/helpers."""

import copy

import pytest
import torch
from helpers import TINY

from mim4dd_kit.config.recipe import validate_recipe


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny convolutions run faster on one thread, and the suite shares a 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One ``MDK_CACHE`` (expert buffers) per test module, never the user's. Use with
    ``pytestmark = pytest.mark.usefixtures("module_cache")``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MDK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


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
