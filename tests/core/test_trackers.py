"""Experiment trackers (plugin kind ``loggers``): TensorBoard and MLflow run for real on a
tiny run and what they wrote is read back; a missing package names its extra."""

import json
import sys

import pytest
import yaml
from helpers import TINY
from typer.testing import CliRunner

from mim4dd_kit.api.loggers import evaluation_scalars, flatten
from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import PluginError
from mim4dd_kit.run.engine import run

runner = CliRunner()
EVAL = {"name": "train_from_scratch", "models": 1, "epochs": 1, "augmentation": None}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _mlflow_run(run_dir):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "mim4dd_kit"]
    (found,) = client.search_runs([experiment.experiment_id])
    return client, found


@pytest.mark.slow
def test_tensorboard_and_mlflow_record_the_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    loggers = [{"name": "tensorboard", "images_every": 2}, {"name": "mlflow", "images_every": 4}]
    recipe = validate_recipe({**TINY, "loggers": loggers, "evaluators": [EVAL]})
    out = tmp_path / "run"
    result = run(recipe, out=out, progress=False)
    rows = _rows(out / "losses.jsonl")
    accuracy = result.evaluations["train_from_scratch"]["accuracy_mean"]

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [(s.step, round(s.value, 5)) for s in events.Scalars("loss")] == [
        (r["iteration"], round(r["loss"], 5)) for r in rows]
    assert {"loss", "loss_dd", "eval/train_from_scratch/accuracy_mean"} <= set(
        events.Tags()["scalars"])
    (final,) = events.Scalars("eval/train_from_scratch/accuracy_mean")
    assert final.step == 6 and final.value == pytest.approx(accuracy)
    images = events.Images("synthetic")
    assert [i.step for i in images] == [2, 4, 6]
    # a row per class (10), ipc 3 columns of 8x8 images, 1 pixel between
    assert (images[0].height, images[0].width) == (10 * 8 + 9, 3 * 8 + 2)
    recipe_text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "ipc: 3" in recipe_text

    client, found = _mlflow_run(out)
    assert found.info.status == "FINISHED" and found.info.run_name == "tiny"
    assert found.data.params["synthetic.ipc"] == "3"
    assert found.data.params["dataset.name"] == "digits"
    history = client.get_metric_history(found.info.run_id, "loss")
    assert sorted((m.step, round(m.value, 5)) for m in history) == [
        (r["iteration"], round(r["loss"], 5)) for r in rows]
    assert found.data.metrics["eval/train_from_scratch/accuracy_mean"] == pytest.approx(accuracy)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "synthetic")}
    assert artifacts == {"synthetic/iteration_000004.png", "synthetic/iteration_000006.png"}
    saved = json.loads(open(client.download_artifacts(found.info.run_id, "evaluations.json",
                                                      str(tmp_path))).read())
    assert saved["train_from_scratch"]["accuracy_mean"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_an_interrupted_run_is_marked_killed_in_mlflow(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")

    def interrupt(iteration, logs):
        if iteration == 3:
            raise KeyboardInterrupt

    recipe = validate_recipe({**TINY, "loggers": [{"name": "mlflow"}]})
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "run", progress=False, callbacks=[interrupt])
    client, found = _mlflow_run(tmp_path / "run")
    assert found.info.status == "KILLED"
    assert len(client.get_metric_history(found.info.run_id, "loss")) == 3


@pytest.mark.parametrize("name, module, extra", [
    ("tensorboard", "torch.utils.tensorboard", "tensorboard"),
    ("mlflow", "mlflow", "mlflow"),
    ("wandb", "wandb", "wandb"),
])
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(PluginError, match=rf"pip install 'mim4dd_kit\[{extra}\]'"):
        default_registry().build("loggers", {"name": name})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "loggers": [{"name": name}]}))
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and f"mim4dd_kit[{extra}]" in res.stderr, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "run" / "losses.jsonl").exists()  # stopped before any work


def test_loggers_are_validated_and_leave_the_fingerprint_alone():
    with pytest.raises(Exception, match=r"loggers.0.images_evry: unknown key"):
        validate_recipe({**TINY, "loggers": [{"name": "tensorboard", "images_evry": 3}]})
    plain = validate_recipe(TINY)
    tracked = validate_recipe({**TINY, "loggers": [{"name": "mlflow"}]})
    assert plain.fingerprint() == tracked.fingerprint()  # a run may resume with others


def test_flattened_recipe_and_evaluation_scalars():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "e": [{"name": "x"}], "f": {}}) == {
        "a.b": 1, "a.c": [1, 2], "e.0.name": "x", "f": "{}"}
    scalars = evaluation_scalars({"tfs": {"accuracy_mean": 80.0, "batched": True,
                                          "accuracies": [79.0, 81.0], "params": {"lr": 0.1}},
                                  "bad": "not a dict"})
    assert scalars == {"eval/tfs/accuracy_mean": 80.0, "eval/tfs/params/lr": 0.1}
