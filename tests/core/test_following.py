"""Following a run: the streaming loss log, plain progress lines and the verbosity options."""

import json
import logging

import pytest
import torch
import yaml
from helpers import TINY
from typer.testing import CliRunner

from mim4dd_kit.cli import app
from mim4dd_kit.cli_logging import hoist_global_options, level_of
from mim4dd_kit.core import plots
from mim4dd_kit.run.engine import run
from mim4dd_kit.run.runlog import ProgressLines, format_seconds

runner = CliRunner()


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_losses_stream_while_the_run_runs(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    seen = {}

    def peek(iteration, logs):
        # the row of this iteration is on disk (flushed) before the loop goes on
        seen[iteration] = (_rows(out / "losses.jsonl"), (out / "recipe.yaml").exists(),
                           dict(logs))

    run(tiny_recipe(), out=out, progress=False, evaluate=False, callbacks=[peek])
    rows, has_recipe, logs = seen[3]
    assert has_recipe and [r["iteration"] for r in rows] == [1, 2, 3]
    # every key of the iteration's logs, plus the wall time and seconds per iteration
    assert set(logs) | {"iteration", "wall_time", "s_per_it"} == set(rows[-1])
    assert rows[-1]["loss"] == pytest.approx(logs["loss"])
    assert all(r["s_per_it"] > 0 for r in rows)
    assert rows[0]["wall_time"] <= rows[1]["wall_time"] <= rows[2]["wall_time"]
    final = _rows(out / "losses.jsonl")
    assert [r["iteration"] for r in final] == list(range(1, 7))
    assert yaml.safe_load((out / "recipe.yaml").read_text())["name"] == "tiny"


def test_a_crash_keeps_the_rows_and_resume_drops_those_after_the_checkpoint(tiny_recipe,
                                                                             tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe()  # checkpoint every 2 iterations

    def crash(iteration, logs):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=out, progress=False, evaluate=False, callbacks=[crash])
    crashed = _rows(out / "losses.jsonl")
    assert [r["iteration"] for r in crashed] == [1, 2, 3, 4, 5]  # nothing lost to the crash
    run(recipe, out=out, progress=False, evaluate=False, resume=True)
    rows = _rows(out / "losses.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]  # 5 again, from iteration 4
    assert rows[:4] == crashed[:4]  # the kept rows keep their times


def test_loss_curves_are_drawn_once_when_the_loop_ends(tiny_recipe, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "have_matplotlib", lambda: True)
    monkeypatch.setattr(plots, "save_loss_curves",
                        lambda rows, path, title: drawn.append((list(rows), path, title)))
    out = tmp_path / "run"
    recipe = tiny_recipe()  # 6 iterations, checkpoint every 2

    def crash(iteration, logs):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=out, progress=False, evaluate=False, callbacks=[crash])
    assert drawn == []  # an interrupted loop draws nothing
    seen = []
    run(recipe, out=out, progress=False, evaluate=False, resume=True,
        callbacks=[lambda it, logs: seen.append({"iteration": it, **logs})])
    assert len(drawn) == 1
    rows, path, title = drawn[0]
    assert path == out / "losses.png" and title == recipe.name
    # the checkpoint's rows, then this run's, exactly as the callbacks saw them
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[4:] == seen
    written = _rows(out / "losses.jsonl")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in written])


def test_plain_progress_lines_through_logging(tiny_recipe, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mim4dd_kit.run"):
        run(tiny_recipe(output={"log_every": 2}), out=tmp_path / "r", progress=False,
            evaluate=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "mim4dd_kit.run"]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"], lines
    assert lines[-1].startswith("tiny: iteration 6/6 (100%) loss_dd=")
    assert " loss=" in lines[-1] and "ETA 0:00:00" in lines[-1]


def test_progress_lines_also_come_after_a_time_limit(caplog):
    lines = ProgressLines("x", 0, 1000, every=500, seconds=1e-9)
    with caplog.at_level(logging.INFO, logger="mim4dd_kit.run"):
        for i in range(1, 4):
            lines.update(i)
    assert len(caplog.records) == 3
    assert format_seconds(3725) == "1:02:05" and format_seconds(float("inf")) == "-:--:--"


def test_global_options_move_before_the_subcommand():
    commands = {"validate", "run"}
    assert hoist_global_options(["validate", "r.yaml", "--debug", "-q"], commands) == [
        "--debug", "-q", "validate", "r.yaml"]
    assert hoist_global_options(["run", "--log-level", "debug", "r.yaml"], commands) == [
        "--log-level", "debug", "run", "r.yaml"]
    assert hoist_global_options(["run", "r.yaml", "--", "-q"], commands) == [
        "run", "r.yaml", "--", "-q"]
    assert level_of(0, 0, None) == logging.INFO and level_of(1, 0, None) == logging.DEBUG
    assert level_of(0, 2, None) == logging.ERROR and level_of(2, 0, "warning") == logging.WARNING


def test_debug_after_the_subcommand(tmp_path):
    res = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml"), "--debug"])
    assert res.exit_code != 0 and "does not exist" in str(res.exception)
    res = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml"), "--log-level",
                              "loud"])
    assert res.exit_code == 2 and "loud" in res.stderr


def test_mdk_run_without_a_terminal_logs_plain_lines(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    evaluator = {"name": "train_from_scratch", "models": 1, "epochs": 2, "augmentation": None}
    recipe.write_text(yaml.safe_dump({**TINY, "output": {"log_every": 3},
                                      "evaluators": [evaluator]}))
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    plain = [line for line in res.stderr.splitlines() if "tiny: iteration" in line]
    assert len(plain) == 2 and " INFO tiny: iteration 6/6 (100%)" in plain[-1], res.stderr
    assert " INFO evaluation train_from_scratch: network-epochs 2/2 (100%)" in res.stderr
    assert "\x1b" not in res.stderr  # no bar, no colour
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "b"), "--no-eval",
                              "-q"])
    assert res.exit_code == 0 and "iteration" not in res.stderr, res.stderr


# ------------------------------------------------------------------ evaluation progress


@pytest.fixture(scope="module")
def digits_set():
    from mim4dd_kit.api import DatasetRef
    from mim4dd_kit.config.registry import default_registry

    data = default_registry().build("datasets", DatasetRef(name="digits")).load()
    images, labels = data.sample_per_class(2)
    return data, images, labels


def _evaluate(digits_set, evaluators, **kwargs):
    from mim4dd_kit.api import BackboneRef, EvaluatorRef
    from mim4dd_kit.run.evaluate import run_evaluators

    data, images, labels = digits_set
    return run_evaluators([EvaluatorRef.model_validate(e) for e in evaluators], images, labels,
                          None, data, device=torch.device("cpu"), seed=0,
                          backbone=BackboneRef(name="convnet", width=8, depth=2), **kwargs)


@pytest.mark.parametrize("batched", [True, False])
def test_evaluation_progress_counts_network_epochs(digits_set, caplog, batched):
    spec = {"name": "train_from_scratch", "models": 2, "epochs": 3, "batched": batched,
            "augmentation": None}
    with caplog.at_level(logging.INFO, logger="mim4dd_kit.evaluate"):
        _evaluate(digits_set, [spec, {**spec, "models": 1}])
    lines = [r.getMessage() for r in caplog.records if r.name == "mim4dd_kit.evaluate"]
    assert [line.split(": ", 1)[1].split(" |")[0] for line in lines] == [
        "network-epochs 1/6 (17%)", "network-epochs 2/6 (33%)", "network-epochs 3/6 (50%)",
        "network-epochs 4/6 (67%)", "network-epochs 5/6 (83%)", "network-epochs 6/6 (100%)",
        "network-epochs 1/3 (33%)", "network-epochs 2/3 (67%)", "network-epochs 3/3 (100%)",
    ] if not batched else [
        "network-epochs 2/6 (33%)", "network-epochs 4/6 (67%)", "network-epochs 6/6 (100%)",
        "network-epochs 1/3 (33%)", "network-epochs 2/3 (67%)", "network-epochs 3/3 (100%)",
    ], lines
    assert lines[0].startswith("evaluation train_from_scratch: ")
    assert lines[-1].startswith("evaluation train_from_scratch.2: ") and "ETA" in lines[-1]


def test_evaluation_bar_has_a_total_per_evaluation(digits_set, monkeypatch):
    from mim4dd_kit.run import progress

    seen = []
    real = progress.EvaluationProgress.__exit__

    def keep(self, *exc):
        seen.extend((t.description, t.total, t.completed) for t in self._progress.tasks)
        return real(self, *exc)

    monkeypatch.setattr(progress.EvaluationProgress, "__exit__", keep)
    _evaluate(digits_set, [
        {"name": "train_from_scratch", "models": 2, "epochs": 2, "augmentation": None},
        {"name": "cka", "epochs": 2, "real_epochs": 1, "augmentation": None}],
        progress_bar=True)
    assert seen == [("evaluation train_from_scratch", 4, 4), ("evaluation cka", 3, 3)]


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tiny_recipe, tmp_path):
    from mim4dd_kit.core.errors import RunError

    out = tmp_path / "run"

    def stop(iteration, logs):
        if iteration == 1:  # before the checkpoint at iteration 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_recipe(), out=out, progress=False, evaluate=False, callbacks=[stop])
    assert len(_rows(out / "losses.jsonl")) == 1
    with pytest.raises(RunError, match="already holds losses.jsonl, recipe.yaml"):
        run(tiny_recipe(seed=1), out=out, progress=False, evaluate=False)  # another recipe
    run(tiny_recipe(), out=out, progress=False, evaluate=False)  # the same one: starts over
    assert [r["iteration"] for r in _rows(out / "losses.jsonl")] == list(range(1, 7))
