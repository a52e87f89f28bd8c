"""The run folder: one run at a time (a lock naming its owner), nothing the toolkit did
not write is replaced without --overwrite, --resume needs a checkpoint, killed writes
leave nothing behind, and the set never lands outside the folder."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from helpers import TINY
from typer.testing import CliRunner

from mim4dd_kit.cli import app
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.core.errors import RecipeError, RunError
from mim4dd_kit.run.engine import CHECKPOINT, run
from mim4dd_kit.run.runlock import LOCK_NAME, RunLock

runner = CliRunner()
FAST = {**TINY, "synthetic": {**TINY["synthetic"], "iterations": 2}}


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _recipe_file(tmp_path, data=FAST):
    path = tmp_path / "recipe_in.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_held_lock_is_a_clear_error_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # a live process on this host: this test's own
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "since": "2026-01-01T00:00:00+00:00"}))
    recipe = _recipe_file(tmp_path)
    before = _snapshot(tmp_path)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert res.exit_code == 2, res.output
    message = " ".join(res.stderr.split())
    assert f"process {os.getpid()} on host" in message and LOCK_NAME in message
    assert "in use by another mdk run" in message and "Traceback" not in res.output
    assert _snapshot(tmp_path) == before


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(RunError, match="'elsewhere.example'"):
        RunLock(out).acquire()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host":
                                             socket.gethostname()}))
    result = run(validate_recipe(FAST), out=out, progress=False, evaluate=False)
    assert result.synthetic_path.is_file()
    assert not (out / LOCK_NAME).exists()  # released at the end
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p for p in ("losses.jsonl", "losses.png", "recipe.yaml", "synthetic.safetensors")
         if (out / p).exists()])


def test_files_the_toolkit_did_not_write_are_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("my own notes\n")
    recipe = _recipe_file(tmp_path)
    before = _snapshot(tmp_path)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert res.exit_code == 2
    assert "already holds recipe.yaml" in " ".join(res.stderr.split())
    assert _snapshot(tmp_path) == before
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--overwrite",
                              "--no-eval"])
    assert res.exit_code == 0, res.output
    assert "my own notes" not in (out / "recipe.yaml").read_text()


def test_a_finished_run_is_not_replaced_and_resume_needs_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    recipe = _recipe_file(tmp_path)
    assert runner.invoke(app, ["run", str(recipe), "--out", str(out), "--no-eval"]).exit_code == 0
    before = _snapshot(tmp_path)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--no-eval"])
    assert res.exit_code == 2 and "already exists from a finished run" in res.stderr
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--resume"])
    assert res.exit_code == 2
    message = " ".join(res.stderr.split())
    assert f"holds no checkpoint ({CHECKPOINT})" in message and "has finished" in message
    assert _snapshot(tmp_path) == before
    empty = tmp_path / "empty"
    res = runner.invoke(app, ["run", str(recipe), "--out", str(empty), "--resume"])
    assert res.exit_code == 2 and "run without --resume to start" in " ".join(
        res.stderr.split())
    assert not empty.exists()


def test_output_file_outside_the_run_folder_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="output.file: must be a plain file name"):
        validate_recipe({**FAST, "output": {"file": "../../x.safetensors"}})
    recipe = validate_recipe(FAST)
    forged = recipe.model_copy(update={"output": recipe.output.model_copy(
        update={"file": "../escaped.safetensors"})})  # past validation: the engine checks too
    with pytest.raises(RecipeError, match="must be a file name inside the run folder"):
        run(forged, out=tmp_path / "run", progress=False, evaluate=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    left = [out / f".{CHECKPOINT}.abc123.tmp", out / ".synthetic.safetensors.x.tmp"]
    for p in left:
        p.write_bytes(b"half a file")
    mine = out / ".notes.txt.tmp"
    mine.write_text("not the toolkit's")
    run(validate_recipe(FAST), out=out, progress=False, evaluate=False)
    assert not any(p.exists() for p in left) and mine.read_text() == "not the toolkit's"


def test_an_unwritable_out_fails_before_the_first_iteration(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "run"  # a folder under a file cannot be made, even by root
    else:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    seen = []
    with pytest.raises(RunError, match="cannot create the run folder"):
        run(validate_recipe(FAST), out=out, progress=False, evaluate=False,
            callbacks=[lambda i, logs: seen.append(i)])
    assert seen == []


@pytest.mark.slow
def test_two_processes_into_one_folder(tmp_path):
    """Two `mdk run` processes into one folder: the second starts once the first holds
    the lock, and stops with the lock error (or, had the first already finished, with
    the finished-run error); the folder holds the first run, complete."""
    iterations = 300
    data = {**TINY, "synthetic": {**TINY["synthetic"], "iterations": iterations}}
    recipe = _recipe_file(tmp_path, data)
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "mim4dd_kit.cli", "run", str(recipe), "--out", str(out),
           "--no-eval", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    deadline = time.monotonic() + 300
    while not (out / LOCK_NAME).exists() and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    message = " ".join(second.stderr.split())
    assert ("in use by another mdk run" in message and LOCK_NAME in message) or (
        "already exists from a finished run" in message), message
    assert (out / "synthetic.safetensors").is_file() and not (out / LOCK_NAME).exists()
    assert not (out / CHECKPOINT).exists()
    assert len((out / "losses.jsonl").read_text().splitlines()) == iterations


def test_a_full_disk_is_an_error_naming_the_file(tmp_path, monkeypatch):
    import errno

    from mim4dd_kit.run import statefile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(statefile, "save_file", full)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(_recipe_file(tmp_path)), "--out", str(out),
                              "--no-eval"])
    assert res.exit_code == 2, res.output
    message = " ".join(res.stderr.split())
    assert f"cannot write {out / CHECKPOINT}: No space left on device" in message
    # no temporary, no lock: only the logs streamed before the failure stay
    assert sorted(p.name for p in out.iterdir()) == ["losses.jsonl", "recipe.yaml"]


def test_sweep_resume_starts_variants_that_never_started(tmp_path):
    import shutil

    from mim4dd_kit.analysis.sweep import load_sweep, run_sweep

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(FAST, sort_keys=False))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "name": "sw",
                                    "grid": {"seed": [0, 1]}}))
    sweep = load_sweep(path)
    out = tmp_path / "out"
    run_sweep(sweep, out_dir=out, progress=False)
    shutil.rmtree(out / sweep.variants()[1].name)  # as if the sweep stopped before it
    rows = run_sweep(sweep, out_dir=out, resume=True, progress=False)
    assert [r["status"] for r in rows] == ["skipped", "ran"]
