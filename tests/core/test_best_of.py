"""output.evaluate_every: scores at evaluation checkpoints and MTT's best-of."""

import json

import pytest
import torch

from mim4dd_kit.io.synthetic import load_synthetic
from mim4dd_kit.run import best_of
from mim4dd_kit.run import engine as engine_mod
from mim4dd_kit.run.engine import run

EVAL = [{"name": "train_from_scratch", "models": 2, "epochs": 3}]


def _recipe(tiny_recipe, every=None, iterations=6):
    return tiny_recipe(synthetic={"iterations": iterations}, evaluators=EVAL,
                       output={"checkpoint_every": 2, "evaluate_every": every})


def test_checkpoint_scores_leave_the_trajectory_and_give_best_of(tiny_recipe, tmp_path):
    plain = run(_recipe(tiny_recipe), out=tmp_path / "plain", progress=False)
    scored = run(_recipe(tiny_recipe, every=2), out=tmp_path / "scored", progress=False)
    a, b = load_synthetic(plain.synthetic_path), load_synthetic(scored.synthetic_path)
    # the distillation is bit for bit that of the run without checkpoint evaluations
    assert torch.equal(a.images, b.images)
    assert a.metadata["final_losses"] == b.metadata["final_losses"]
    assert plain.evaluations["train_from_scratch"]["accuracies"] == \
        scored.evaluations["train_from_scratch"]["accuracies"]
    assert plain.evaluation_checkpoints == [] and plain.best_of == {}
    assert "best_of" not in a.metadata and "evaluation_checkpoints" not in a.metadata

    rows = scored.evaluation_checkpoints
    assert [r["iteration"] for r in rows] == [0, 2, 4, 6]
    means = [r["evaluations"]["train_from_scratch"]["accuracy_mean"] for r in rows]
    # the last checkpoint is the final evaluation, which stays the headline
    assert means[-1] == scored.evaluations["train_from_scratch"]["accuracy_mean"]
    best = scored.best_of["train_from_scratch"]
    assert best["accuracy_mean"] == max(means)
    assert best["iteration"] == rows[means.index(max(means))]["iteration"]
    assert best["checkpoints"] == 4
    assert (best["protocol"], best["models"], best["epochs"]) == ("mim4dd", 2, 3)
    assert best["label"] == "max over 4 evaluation checkpoints (MTT's reporting)"
    assert b.metadata["best_of"] == scored.best_of
    assert b.metadata["evaluation_checkpoints"] == rows
    lines = [json.loads(x) for x in
             (tmp_path / "scored" / "evaluations.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [0, 2, 4, 6]
    assert [x["train_from_scratch/accuracy_mean"] for x in lines] == means


def test_a_checkpoint_scores_as_the_final_evaluation_of_a_shorter_run(tiny_recipe, tmp_path):
    scored = run(_recipe(tiny_recipe, every=2), out=tmp_path / "scored", progress=False)
    short = run(_recipe(tiny_recipe, iterations=2), out=tmp_path / "short", progress=False)
    at_two = scored.evaluation_checkpoints[1]
    assert at_two["iteration"] == 2
    assert at_two["evaluations"]["train_from_scratch"]["accuracies"] == \
        short.evaluations["train_from_scratch"]["accuracies"]


def test_resume_keeps_the_scores_already_made(tiny_recipe, tmp_path, monkeypatch):
    straight = run(_recipe(tiny_recipe, every=2), out=tmp_path / "straight", progress=False)
    scored_at = []
    original = engine_mod.Run.record_score

    def counting(self, iteration, evaluations):
        scored_at.append(iteration)
        return original(self, iteration, evaluations)

    monkeypatch.setattr(engine_mod.Run, "record_score", counting)

    def interrupt(iteration, logs):
        if iteration == 5:
            raise KeyboardInterrupt

    recipe = _recipe(tiny_recipe, every=2)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "r", progress=False, callbacks=[interrupt])
    assert scored_at == [0, 2, 4]
    resumed = run(recipe, out=tmp_path / "r", progress=False, resume=True)
    assert scored_at == [0, 2, 4, 6]  # 0, 2 and 4 came back from the checkpoint
    assert resumed.evaluation_checkpoints == straight.evaluation_checkpoints
    assert resumed.best_of == straight.best_of
    rows = (tmp_path / "r" / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in rows] == [0, 2, 4, 6]


def test_no_evaluation_means_no_checkpoint_scores(tiny_recipe, tmp_path):
    result = run(_recipe(tiny_recipe, every=2), out=tmp_path / "r", progress=False,
                 evaluate=False)
    assert result.evaluation_checkpoints == [] and result.best_of == {}
    assert not (tmp_path / "r" / "evaluations.jsonl").exists()


def test_best_of_takes_the_earliest_maximum_and_skips_other_results():
    rows = [
        {"iteration": 0, "evaluations": {"a": {"accuracy_mean": 10.0, "accuracy_std": 1.0}}},
        {"iteration": 5, "evaluations": {"a": {"accuracy_mean": 30.0, "accuracy_std": 2.0}}},
        {"iteration": 10, "evaluations": {"a": {"accuracy_mean": 30.0, "accuracy_std": 3.0}}},
    ]
    best = best_of.best_of(rows)
    assert best == {"a": {"accuracy_mean": 30.0, "accuracy_std": 2.0, "iteration": 5,
                          "checkpoints": 3, "label": best_of.label(3)}}
    assert best_of.summary({"cka": {"diagonal": [0.5]},
                            "t": {"accuracy_mean": 1.0, "accuracy_std": 0.0, "seconds": 2}}) \
        == {"t": {"accuracy_mean": 1.0, "accuracy_std": 0.0}}
    assert [i for i in range(11) if best_of.due(i, 5, 10)] == [0, 5]
    assert not any(best_of.due(i, None, 10) for i in range(11))


def _set_with_best_of(tmp_path):
    from mim4dd_kit.io.synthetic import save_synthetic

    rows = [{"iteration": it, "evaluations": {"train_from_scratch": {
        "accuracy_mean": m, "accuracy_std": 1.5, "accuracies": [m - 1.5, m + 1.5],
        "protocol": "mim4dd", "models": 2, "epochs": 3}}}
        for it, m in ((0, 20.0), (2, 61.25), (4, 40.0))]
    final = {"train_from_scratch": {"accuracy_mean": 40.0, "accuracy_std": 1.5,
                                    "accuracies": [38.5, 41.5], "models": 2, "epochs": 3}}
    meta = {"recipe": {"dd_loss": {"name": "mtt"}}, "iterations": 4,
            "dataset": {"name": "digits", "mean": [0.0], "std": [1.0]},
            "evaluations": final, "evaluation_checkpoints": rows,
            "best_of": best_of.best_of(rows)}
    path = tmp_path / "run" / "synthetic.safetensors"
    path.parent.mkdir()
    return save_synthetic(path, torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), metadata=meta)


def test_best_of_is_labelled_beside_the_final_accuracy(tmp_path):
    from typer.testing import CliRunner

    from mim4dd_kit.analysis.compare import compare, format_compare
    from mim4dd_kit.analysis.report import build_report
    from mim4dd_kit.cli import app

    path = _set_with_best_of(tmp_path)
    label = "max over 3 evaluation checkpoints (MTT's reporting)"
    row = compare([path])[0]
    cols = row["columns"]
    assert cols["train_from_scratch acc %"] == {"mean": 40.0, "std": 1.5}  # the headline
    assert cols["train_from_scratch best_of acc %"] == {"mean": 61.25, "std": 1.5}
    assert cols["train_from_scratch best_of protocol"]["text"] == \
        f"{label}, at iteration 2; protocol mim4dd × 2 nets × 3 ep"
    table = format_compare([row])
    head = table.splitlines()[0]
    assert head.index("train_from_scratch acc %") < head.index("train_from_scratch best_of")
    assert "61.25 ± 1.50" in table and f"{label}, at iteration 2" in table

    res = CliRunner().invoke(app, ["show", str(path)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "best_of acc %" in res.output and "61.25 ± 1.50" in res.output
    assert "(MTT's reporting), at iteration 2" in res.output

    page = build_report(path, tmp_path / "report.md", markdown=True).path
    text = page.read_text()
    assert f"Best of: 61.25 ± 1.50 %, {label}, at iteration 2" in text
    assert text.index("Test accuracy 40.00") < text.index("Best of: 61.25")


def test_an_evaluator_drawing_from_the_global_streams_moves_nothing(tiny_recipe, tmp_path,
                                                                    monkeypatch):
    """The built-in evaluators seed their own generators; one that draws from torch's,
    Python's and NumPy's global streams must leave the distillation as it was too."""
    import random

    import numpy as np

    def streams(seen):
        # every global stream as the loop leaves it after each iteration
        return lambda it, logs: seen.append((torch.get_rng_state().tolist(),
                                             random.getstate(),
                                             np.random.get_state()[1].tolist()))

    before, after = [], []
    plain = run(_recipe(tiny_recipe), out=tmp_path / "plain", progress=False,
                callbacks=[streams(before)])
    real = engine_mod.run_evaluators
    draws = []

    def greedy(*args, **kwargs):
        draws.append((torch.rand(1).item(), random.random(), float(np.random.rand())))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "run_evaluators", greedy)
    scored = run(_recipe(tiny_recipe, every=2), out=tmp_path / "scored", progress=False,
                 callbacks=[streams(after)])
    assert len(draws) == 4  # iterations 0, 2, 4 and the final evaluation
    assert torch.equal(load_synthetic(plain.synthetic_path).images,
                       load_synthetic(scored.synthetic_path).images)
    assert len(before) == 6 and before == after


def test_mdk_run_shows_best_of_under_its_label(tmp_path):
    import yaml
    from helpers import TINY, merged
    from typer.testing import CliRunner

    from mim4dd_kit.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(merged(TINY, {
        "synthetic": {**TINY["synthetic"], "iterations": 2}, "evaluators": EVAL,
        "output": {"evaluate_every": 1}})))
    cli = CliRunner()
    res = cli.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "a")],
                     env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "train_from_scratch best_of acc %" in res.output
    assert "max over 3 evaluation checkpoints (MTT's reporting), at iteration" in res.output
    res = cli.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [r["iteration"] for r in summary["evaluation_checkpoints"]] == [0, 1, 2]
    best = summary["best_of"]["train_from_scratch"]
    assert best["accuracy_mean"] == max(
        r["evaluations"]["train_from_scratch"]["accuracy_mean"]
        for r in summary["evaluation_checkpoints"])
    assert summary["evaluations"]["train_from_scratch"]["accuracy_mean"] == \
        summary["evaluation_checkpoints"][-1]["evaluations"]["train_from_scratch"][
            "accuracy_mean"]


def test_evaluate_every_without_evaluators_is_refused(tiny_recipe, tmp_path):
    from mim4dd_kit.core.errors import RecipeError

    recipe = tiny_recipe(output={"evaluate_every": 2})  # TINY has evaluators: []
    with pytest.raises(RecipeError, match=r"output.evaluate_every is 2 .* no evaluators"):
        run(recipe, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_a_fresh_run_leaves_no_earlier_checkpoint_scores(tiny_recipe, tmp_path):
    run(_recipe(tiny_recipe, every=2), out=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "evaluations.jsonl").exists()
    run(_recipe(tiny_recipe), out=tmp_path / "r", progress=False, overwrite=True)
    assert not (tmp_path / "r" / "evaluations.jsonl").exists()


def test_sweep_tables_show_best_of_beside_the_final_accuracy(tmp_path):
    from mim4dd_kit.analysis.sweep import Variant, _row, format_table

    path = _set_with_best_of(tmp_path)
    meta = load_synthetic(path).metadata
    label = "max over 3 evaluation checkpoints (MTT's reporting)"
    scored = _row(Variant("a", {"lr": 1.0}, [], None), path, "skipped", 4, {},
                  meta["evaluations"], meta["best_of"])
    plain = _row(Variant("b", {"lr": 2.0}, [], None), path, "skipped", 4, {},
                 meta["evaluations"])
    assert scored["best_of"]["train_from_scratch"] == {
        "mean": 61.25, "std": 1.5, "iteration": 2, "label": label}
    assert plain["best_of"] == {}
    table = format_table([scored, plain])
    head, _, first, second = table.splitlines()
    assert head.index("train_from_scratch acc %") < head.index(
        "train_from_scratch best_of acc %")
    assert f"61.25 ± 1.50 ({label}, at iteration 2)" in first
    assert "40.00 ± 1.50" in first and "61.25" not in second


def test_trackers_get_checkpoint_scores_at_their_step_and_best_of_at_the_end(
        tiny_recipe, tmp_path, monkeypatch):
    from mim4dd_kit.run import tracking

    logged: list[tuple[str, int, dict]] = []

    class Recorder:
        def start(self, run_info):
            pass

        def log_scalars(self, step, scalars):
            if any(k.startswith("eval/") for k in scalars):
                logged.append(("scalars", step, dict(scalars)))

        def log_image(self, step, picture):
            pass

        def log_evaluations(self, step, evaluations):
            logged.append(("evaluations", step, evaluations))

        def finish(self, status):
            pass

    monkeypatch.setattr(tracking.Trackers, "build",
                        classmethod(lambda cls, refs, registry: cls([("rec", Recorder())])))
    result = run(_recipe(tiny_recipe, every=2), out=tmp_path / "run", progress=False)
    steps = [(kind, step) for kind, step, _ in logged]
    # one evaluation per checkpoint (0, 2, 4; the final one at 6), then best_of at 6
    assert steps == [("evaluations", 0), ("evaluations", 2), ("evaluations", 4),
                     ("evaluations", 6), ("scalars", 6)]
    best = result.best_of["train_from_scratch"]
    assert logged[-1][2] == {
        "eval/train_from_scratch/best_of/accuracy_mean": best["accuracy_mean"],
        "eval/train_from_scratch/best_of/accuracy_std": best["accuracy_std"],
        "eval/train_from_scratch/best_of/iteration": float(best["iteration"]),
        "eval/train_from_scratch/best_of/checkpoints": 4.0}
    means = [ev["train_from_scratch"]["accuracy_mean"] for kind, _, ev in logged[:4]]
    assert means == [r["evaluations"]["train_from_scratch"]["accuracy_mean"]
                     for r in result.evaluation_checkpoints]
