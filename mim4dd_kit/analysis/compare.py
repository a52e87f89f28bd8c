"""Side-by-side comparison of synthetic sets (``mdk compare``).

One row per file: the method that made it (the recipe's DD loss and regularizer, or the
coreset method of a baseline), the data set, the images per class, the iterations, and the
headline number of every evaluation stored in the file's metadata: accuracy mean ± std (in
percent, over the evaluator's networks) for ``train_from_scratch``-style results with
the protocol and budget that produced it in the next column (``protocol dsa × 20 nets ×
1000 ep``, so a 3-epoch and a 300-epoch score are not mistaken for peers), one column
per backbone for ``cross_arch``, the mean CKA diagonal for ``cka``, the bound averaged
over layers for ``mi_estimate``. Missing evaluations can be computed on the way
with :func:`mim4dd_kit.run.evaluate.evaluate`. Numbers are always those stored for the final
set: nothing is selected on test data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..api import DatasetRef, EvaluatorRef
from ..config.registry import Registry, default_registry
from ..io.synthetic import SyntheticSet, load_synthetic


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _mean(values: Any) -> float | None:
    if not isinstance(values, list):
        return None
    nums = [v for v in (_num(x) for x in values) if v is not None]
    return sum(nums) / len(nums) if nums else None


def headlines(name: str, result: Any) -> dict[str, dict[str, Any]]:
    """Headline numbers of one stored evaluation, by column name.

    Each value is ``{"mean": m, "std": s}`` (accuracies, percent), ``{"value": v}``, or
    ``{"text": t}`` for the protocol and budget beside an accuracy (``name protocol``):
    ``accuracy_mean`` ± ``accuracy_std``, one accuracy per row of a ``table`` (per
    backbone), and every number a result lists under ``headline`` (its keys). Unknown
    result shapes give no columns (they still appear in ``mdk show``).
    """
    if not isinstance(result, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    declared = result.get("headline")
    if isinstance(declared, list):
        # the evaluator names its headline numbers: one column each
        for key in declared:
            value = _num(result.get(key)) if isinstance(key, str) else None
            if value is not None:
                out[f"{name} {key}"] = {"value": value}
    mean = _num(result.get("accuracy_mean"))
    if mean is not None:
        out[f"{name} acc %"] = {"mean": mean, "std": _num(result.get("accuracy_std")) or 0.0}
        budget = budget_of(result)
        if budget:
            out[f"{name} protocol"] = {"text": budget}
    table = result.get("table")
    if isinstance(table, list):
        for row in table:
            if not isinstance(row, dict) or _num(row.get("accuracy_mean")) is None:
                continue
            label = str(row.get("backbone", "?"))
            out[f"{name}/{label} acc %"] = {"mean": float(row["accuracy_mean"]),
                                            "std": _num(row.get("accuracy_std")) or 0.0}
    if isinstance(declared, list):
        return out
    # results stored before evaluators named their headline numbers
    diag = _mean(result.get("diagonal"))
    if diag is not None:
        out[f"{name} diag mean"] = {"value": diag}
    bound = _mean(result.get("mi_lower_bound"))
    if bound is not None:
        out[f"{name} bound (layer mean)"] = {"value": bound}
    return out


def best_of_entries(metadata: Any) -> dict[str, dict[str, Any]]:
    """A set's ``best_of`` entries that have the expected shape (``output.evaluate_every``,
    mim4dd_kit/run/best_of.py): per evaluator, the max over the evaluation checkpoints
    with its ``iteration`` and its ``label``."""
    best = metadata.get("best_of") if isinstance(metadata, dict) else None
    if not isinstance(best, dict):
        return {}
    return {str(k): v for k, v in best.items() if isinstance(v, dict)
            and _num(v.get("accuracy_mean")) is not None and isinstance(v.get("label"), str)}


def best_of_text(entry: dict[str, Any]) -> str:
    """``max over K evaluation checkpoints (MTT's reporting), at iteration N`` and the
    budget of the checkpoint evaluations (``protocol mim4dd × 5 nets × 300 ep``), which
    may differ from a final evaluation stored later by ``mdk evaluate --save``."""
    budget = budget_of(entry)
    return (f"{entry['label']}, at iteration {entry.get('iteration', '?')}"
            + (f"; {budget}" if budget else ""))


def best_of_columns(metadata: Any) -> dict[str, dict[str, Any]]:
    """Comparison columns of a set's best-of entries: ``<evaluator> best_of acc %`` and,
    beside it, ``<evaluator> best_of protocol`` naming what it is. They come after the
    final accuracy, which stays the headline."""
    out: dict[str, dict[str, Any]] = {}
    for key, entry in best_of_entries(metadata).items():
        out[f"{key} best_of acc %"] = {"mean": float(entry["accuracy_mean"]),
                                       "std": _num(entry.get("accuracy_std")) or 0.0}
        out[f"{key} best_of protocol"] = {"text": best_of_text(entry)}
    return out


#: result keys that describe how much training a score took, and how they are shown
BUDGET_KEYS = (("protocol", "protocol {}"), ("models", "{} nets"), ("epochs", "{} ep"),
               ("real_epochs", "real {} ep"), ("critic_steps", "{} critic steps"))


def budget_of(result: Any) -> str:
    """How much training stands behind a stored evaluation: ``5 nets × 300 ep``; a
    ``cross_arch`` result adds its backbones. Empty for unknown shapes."""
    if not isinstance(result, dict):
        return ""
    parts = []
    for key, form in BUDGET_KEYS:
        value = result.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            parts.append(form.format(value))
    table = result.get("table")
    if isinstance(table, list) and table:
        parts.append(f"{len(table)} backbones")
    return " × ".join(parts)


def method_of(metadata: dict[str, Any]) -> str:
    """A short description of what made a set: ``mtt + mim4dd (λ=0.8)``, ``coreset: herding``."""
    coreset = metadata.get("coreset")
    if isinstance(coreset, dict) and coreset.get("method"):
        space = (coreset.get("features") or {}).get("space")
        return f"coreset: {coreset['method']}" + (f" ({space} features)" if space else "")
    recipe = metadata.get("recipe") or {}
    loss = recipe.get("dd_loss")
    if isinstance(loss, dict):
        loss = loss.get("name")
    if not loss:
        return "?"
    reg = recipe.get("regularizer")
    if isinstance(reg, dict) and reg.get("name"):
        lam = reg.get("lambda")
        return f"{loss} + {reg['name']}" + (f" (λ={lam})" if lam is not None else "")
    return str(loss)


def compare_row(path: Path, s: SyntheticSet) -> dict[str, Any]:
    """The comparison row of one loaded set."""
    meta = s.metadata
    dataset = (meta.get("dataset") or {}).get("name") or \
        ((meta.get("recipe") or {}).get("dataset") or {}).get("name")
    evaluations = meta.get("evaluations") or {}
    columns: dict[str, dict[str, Any]] = {}
    for name, result in evaluations.items():
        columns.update(headlines(name, result))
    columns.update(best_of_columns(meta))
    return {
        "file": str(path),
        "method": method_of(meta),
        "dataset": dataset,
        "ipc": s.ipc() if s.labels.numel() else 0,
        "images": len(s.labels),
        # networks train on the decoded set (multi-formation; mim4dd_kit/io/formation.py)
        "formation": s.formation,
        "decoded_images": len(s.labels) * s.formation ** 2,
        "iterations": meta.get("iterations"),
        "made_by_mdk": s.made_by_mdk,
        "evaluators": list(evaluations),
        "columns": columns,
        "budget": {name: budget_of(result) for name, result in evaluations.items()
                   if budget_of(result)},
        "evaluations": evaluations,
    }


def compare(
    paths: Sequence[str | Path],
    *,
    evaluate_missing: bool = False,
    evaluators: list[EvaluatorRef] | None = None,
    dataset: DatasetRef | None = None,
    device: str = "auto",
    save: bool = False,
    registry: Registry | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One comparison row per file (in the order given).

    With ``evaluate_missing``, a file gets the ``evaluators`` it has no stored result for
    (by name); without ``evaluators``, a file with no stored evaluation at all is scored
    with :func:`~mim4dd_kit.run.evaluate.evaluate`'s defaults. ``save`` stores the new results
    in the files. Each row carries the warnings that evaluation produced.
    """
    from ..run.evaluate import evaluate

    registry = registry or default_registry()
    rows = []
    for p in paths:
        path = Path(p)
        s = load_synthetic(path)
        warnings: list[str] = []
        if evaluate_missing:
            stored = s.metadata.get("evaluations") or {}
            todo = ([e for e in evaluators if e.name not in stored] if evaluators
                    else (None if not stored else []))
            if todo is None or todo:
                if progress is not None:
                    names = ", ".join(e.name for e in todo) if todo else "default evaluators"
                    progress(f"evaluating {path} ({names})")
                result = evaluate(path, evaluators=todo, dataset=dataset, device=device,
                                  save=save, registry=registry)
                warnings += result["warnings"]
                s.metadata["evaluations"] = {**stored, **result["evaluations"]}
        row = compare_row(path, s)
        row["warnings"] = warnings
        rows.append(row)
    return rows


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value: dict[str, Any] | None) -> str:
    if value is None:
        return "–"
    if "text" in value:
        return str(value["text"])
    if "mean" in value:
        return f"{value['mean']:.2f} ± {value['std']:.2f}"
    return f"{value['value']:.4g}"


def format_compare(rows: list[dict[str, Any]], fmt: str = "markdown") -> str:
    """The rows as a Markdown table (default) or as JSON (``fmt="json"``)."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    if fmt != "markdown":
        raise ValueError(f"unknown table format {fmt!r}; use markdown or json")
    cols = list(dict.fromkeys(c for r in rows for c in r["columns"]))
    # files store evaluations in key order; show the protocol's accuracy first, then
    # per-backbone accuracies, then the diagnostics
    kinds = {c: next(r["columns"][c] for r in rows if c in r["columns"]) for c in cols}
    budgets = {c for c in cols if "text" in kinds[c]}
    cols = [c for c in cols if c not in budgets]
    cols.sort(key=lambda c: (0 if c.startswith("train_from_scratch ") else
                             1 if "mean" in kinds[c] and "/" not in c else
                             2 if "mean" in kinds[c] else 3))
    # each accuracy's protocol and budget right beside it
    cols = [x for c in cols
            for x in [c, *[b for b in budgets if b == c.replace(" acc %", " protocol") != c]]]
    head = ["file", "method", "dataset", "IPC", "iterations", *cols]
    lines = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f = r.get("formation", 1)
        ipc = r["ipc"] if f == 1 else f"{r['ipc']} (decodes to {r['ipc'] * f * f})"
        cells = [r["file"], r["method"], r["dataset"] or "?", ipc,
                 "–" if r["iterations"] is None else r["iterations"]]
        cells += [_fmt(r["columns"].get(c)) for c in cols]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
