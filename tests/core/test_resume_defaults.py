"""A checkpoint records what its recipe meant (every component parameter, presets
expanded); a resume after the toolkit's defaults changed is refused, not continued with
another objective."""

import pytest
import torch
from helpers import distilled

from mim4dd_kit.core.errors import CheckpointError
from mim4dd_kit.regularizers import mim4dd
from mim4dd_kit.run.engine import run


def _interrupted(recipe, out):
    def stop(iteration, logs):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=out, progress=False, callbacks=[stop])


def test_resume_is_refused_when_a_preset_changed_since_the_checkpoint(
        tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe(regularizer={"name": "mim4dd"})  # the default preset
    _interrupted(recipe, tmp_path / "run")
    changed = {**mim4dd.PRESETS["critic_free"], "rho": 0.5}
    monkeypatch.setitem(mim4dd.PRESETS, "critic_free", changed)
    with pytest.raises(CheckpointError, match=r"regularizer\.rho") as err:
        run(recipe, out=tmp_path / "run", progress=False, resume=True)
    assert "--overwrite" in str(err.value)


def test_resume_with_unchanged_defaults_is_exact(tiny_recipe, tmp_path):
    recipe = tiny_recipe(regularizer={"name": "mim4dd"})
    straight = distilled(recipe, tmp_path / "straight")
    _interrupted(recipe, tmp_path / "run")
    resumed = distilled(recipe, tmp_path / "run", resume=True)
    assert torch.equal(resumed.images, straight.images)


@pytest.mark.parametrize("entry", ["[1, 2]", "{\"regularizer\": 3}", "not json"])
def test_a_malformed_record_of_settings_is_refused_by_name(tiny_recipe, tmp_path, entry):
    from mim4dd_kit.run.statefile import load_state, read_header, save_state

    recipe = tiny_recipe(regularizer={"name": "mim4dd"})
    _interrupted(recipe, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.safetensors"
    header = read_header(path)
    save_state(path, load_state(path, lambda key: "cpu"),
               {"fingerprint": header["fingerprint"], "resolved": entry})
    with pytest.raises(CheckpointError, match="'resolved' header entry"):
        run(recipe, out=tmp_path / "run", progress=False, resume=True)
