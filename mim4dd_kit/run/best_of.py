"""Scores at evaluation checkpoints during a run, and MTT's "best of" over them.

With ``output.evaluate_every: N`` a run scores its synthetic set with the recipe's
evaluators at iteration 0 and every N iterations, and the final evaluation is the last
checkpoint. This is how MTT reports: its distillation loop evaluates the set every
``eval_it`` iterations from iteration 0 (mtt-distillation ``distill.py:34``, ``:191``) and
keeps the largest mean accuracy seen (``distill.py:218-220``, logged as
``Max_Accuracy`` at ``:224``). That maximum is a selection on test accuracy, so the
toolkit never shows it as the headline: a set's accuracy is its final evaluation, and
``best_of`` is shown beside it, always under :func:`label`.

The checkpoint scores go into the set's metadata (``evaluation_checkpoints``), into
``evaluations.jsonl`` in the run folder (one row per checkpoint) and into the run's
checkpoint, so a resumed run keeps the scores it already made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..core.files import atomic_write

ROWS = "evaluations.jsonl"
#: the keys of an evaluator result a checkpoint keeps: its accuracies and its budget
KEPT = ("accuracy_mean", "accuracy_std", "accuracies", "protocol", "models", "epochs")
#: the budget keys ``best_of`` copies from its checkpoint (how the score was made)
BUDGET = ("protocol", "models", "epochs")


def label(checkpoints: int) -> str:
    """How a best-of number is labelled wherever it is shown."""
    return f"max over {checkpoints} evaluation checkpoints (MTT's reporting)"


def due(iteration: int, every: int | None, total: int) -> bool:
    """Whether iteration ``iteration`` (0 = the initial set) is an evaluation checkpoint
    scored inside the loop; the last iteration is scored by the final evaluation."""
    return every is not None and iteration < total and iteration % every == 0


def summary(evaluations: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a checkpoint keeps of each evaluator's result: its accuracies and the
    protocol, networks and epochs behind them (evaluators that report no accuracy are
    left out)."""
    out: dict[str, dict[str, Any]] = {}
    for key, result in evaluations.items():
        if not isinstance(result, dict) or not _finite(result.get("accuracy_mean")):
            continue
        out[key] = {k: result[k] for k in KEPT if k in result}
    return out


def best_of(checkpoints: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each evaluator, the checkpoint with the largest mean accuracy (the earliest
    on ties, as MTT's strict ``>``), with its iteration and the number of checkpoints."""
    best: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for row in checkpoints:
        for key, result in (row.get("evaluations") or {}).items():
            mean = result.get("accuracy_mean")
            if not _finite(mean):
                continue
            counts[key] = counts.get(key, 0) + 1
            if key not in best or mean > best[key]["accuracy_mean"]:
                best[key] = {"accuracy_mean": float(mean),
                             "accuracy_std": result.get("accuracy_std"),
                             "iteration": int(row["iteration"]),
                             **{k: result[k] for k in BUDGET if k in result}}
    for key, entry in best.items():
        entry["checkpoints"] = counts[key]
        entry["label"] = label(counts[key])
    return best


def write_rows(run_dir: Path, checkpoints: list[dict[str, Any]]) -> None:
    """``evaluations.jsonl``: one JSON object per checkpoint (``iteration`` and, per
    evaluator, ``<evaluator>/accuracy_mean`` and ``<evaluator>/accuracy_std``)."""
    lines = []
    for row in checkpoints:
        flat: dict[str, Any] = {"iteration": row["iteration"]}
        for key, result in row["evaluations"].items():
            for k in ("accuracy_mean", "accuracy_std"):
                if k in result:
                    flat[f"{key}/{k}"] = result[k]
        lines.append(json.dumps(flat) + "\n")
    text = "".join(lines)
    atomic_write(run_dir / ROWS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
