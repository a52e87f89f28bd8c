"""Following a run: the streaming loss log, plain progress lines and the verbosity options."""

import json
import logging

import pytest
import yaml
from conftest import TINY
from typer.testing import CliRunner

from mim4dd_kit.cli import app
from mim4dd_kit.cli_logging import hoist_global_options, level_of
from mim4dd_kit.engine import run
from mim4dd_kit.runlog import ProgressLines, format_seconds

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
    recipe.write_text(yaml.safe_dump({**TINY, "output": {"log_every": 3}}))
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "a"), "--no-eval"])
    assert res.exit_code == 0, res.output
    plain = [line for line in res.stderr.splitlines() if "tiny: iteration" in line]
    assert len(plain) == 2 and " INFO tiny: iteration 6/6 (100%)" in plain[-1], res.stderr
    assert "\x1b" not in res.stderr  # no bar, no colour
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "b"), "--no-eval",
                              "-q"])
    assert res.exit_code == 0 and "iteration" not in res.stderr, res.stderr
