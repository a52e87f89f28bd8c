"""Sweeps: one base recipe, a grid of overrides, one run per combination, one table.

A sweep file is YAML::

    base: ../cifar10_ipc10_mtt_mim.yaml     # relative to the sweep file
    name: cifar10_ipc10_mtt_lambda          # optional; default: the file's stem
    set: [synthetic.iterations=1000]        # optional; applied to every variant
    grid:                                   # cartesian product, in the order written
      regularizer.lambda: [0.0, 0.4, 0.8]
      regularizer.beta: [1.5, 2.0]

Every variant's recipe (base + ``set`` + its grid values) is validated when the sweep is
loaded, so a bad value fails before anything runs. ``run_sweep`` runs the variants with
:func:`mim4dd_kit.run.engine.run` into ``<out>/<variant>/`` and writes a results table
(``results.md``, ``results.json``) beside them. The CLI's ``mdk sweep`` is a thin layer
over this module.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config.recipe import Recipe, _line_of, _Yaml12Loader, load_recipe, parse_yaml, read_yaml_file
from ..config.registry import Registry, _pretty, default_registry
from ..core.errors import RecipeError, RunError
from ..core.files import atomic_write
from ..io.synthetic import load_synthetic
from .compare import best_of_entries, budget_of, headlines

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


class SweepFile(BaseModel):
    """The schema of a sweep file (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    base: str = Field(min_length=1, description="base recipe, relative to the sweep file")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="sweep name; default: the file stem"
    )
    overrides: list[str] = Field(
        default_factory=list, alias="set",
        description="key.path=value overrides applied to every variant",
    )
    grid: dict[str, list[Any]] = Field(
        description="key.path -> values; the variants are the cartesian product"
    )

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        for text in value:
            if "=" not in text:
                raise ValueError(f"{text!r} must look like key.path=value")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not value:
            raise ValueError("needs at least one key.path with a list of values")
        for key, values in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
                raise ValueError(f"{key!r} is not a dotted key path such as regularizer.beta")
            if not values:
                raise ValueError(f"{key}: the list of values is empty")
        return value


def format_value(value: Any) -> str:
    """A grid value as it appears in a variant name: ``2.0`` -> ``2``, a component by name."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, dict):
        head = [str(value["name"])] if "name" in value else []
        rest = [f"{k}_{format_value(v)}" for k, v in value.items() if k != "name"]
        return ".".join(head + rest) or "empty"
    if isinstance(value, list):
        return "_".join(format_value(v) for v in value) or "empty"
    if value is None:
        return "null"
    return str(value)


def _override(key: str, value: Any) -> str:
    # JSON is YAML 1.2 flow syntax, so parse_override reads the value back unchanged
    return f"{key}={json.dumps(value)}"


@dataclass
class Variant:
    """One combination of grid values and the recipe it resolves to."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    recipe: Recipe


@dataclass
class Sweep:
    """A loaded, fully validated sweep; ``variants()`` lists the runs in grid order."""

    path: Path
    name: str
    base: Path
    overrides: list[str]
    grid: dict[str, list[Any]]
    _variants: list[Variant] = field(default_factory=list, repr=False)

    def variants(self) -> list[Variant]:
        return list(self._variants)


def _variant_names(combos: list[dict[str, Any]]) -> list[str]:
    names = []
    for combo in combos:
        parts = [f"{key.rsplit('.', 1)[-1]}={format_value(v)}" for key, v in combo.items()]
        names.append(_UNSAFE.sub("_", "-".join(parts))[:150])
    # two keys with the same leaf (a.lr, b.lr) or lossy slugs could collide: number them
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


def load_sweep(path: str | Path, registry: Registry | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read a sweep file and validate it and every variant's recipe (no data is loaded).

    ``overrides`` (``mdk sweep --set``) apply to every variant after the file's ``set``
    and before its grid values."""
    path = Path(path)
    registry = registry or default_registry()
    text = read_yaml_file(path, "sweep file")
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a sweep file must be a mapping with base and grid")
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as exc:
        root = yaml.compose(text, Loader=_Yaml12Loader)
        lines = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            line = _line_of(root, loc)
            where = f"{path}:{line}" if line else str(path)
            lines.append(f"{where}: {'.'.join(map(str, loc)) or '(top level)'}: {_pretty(e)}")
        raise RecipeError("; ".join(lines)) from None
    base = (path.parent / spec.base).resolve()
    if not base.is_file():
        raise RecipeError(f"{path}: base recipe {spec.base} ({base}) does not exist")
    name = spec.name or _UNSAFE.sub("_", path.stem)
    sweep = Sweep(path, name, base, [*spec.overrides, *overrides], dict(spec.grid))
    keys = list(spec.grid)
    combos = [dict(zip(keys, values, strict=True))
              for values in itertools.product(*(spec.grid[k] for k in keys))]
    for vname, combo in zip(_variant_names(combos), combos, strict=True):
        overrides = [*sweep.overrides, *(_override(k, v) for k, v in combo.items())]
        run_name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}.{vname}")
        try:
            recipe = load_recipe(base, [*overrides, f"name={run_name}"], registry)
        except RecipeError as exc:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in combo.items())
            raise RecipeError(f"{path}: variant {vname} ({shown}) is invalid: {exc}") from None
        sweep._variants.append(Variant(vname, combo, overrides, recipe))
    return sweep


def _finished(final: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The metadata of a finished set for this exact recipe, else None."""
    if not final.is_file():
        return None
    meta = load_synthetic(final).metadata
    if meta.get("recipe_fingerprint") not in (None, recipe.fingerprint()):
        raise RunError(
            f"{final} was made by a different recipe than this sweep's variant; move it away "
            "or choose another output folder"
        )
    if recipe.evaluators and not meta.get("evaluations"):
        return None
    return meta


def _row(variant: Variant, path: Path, status: str, iterations: int | None,
         losses: dict[str, float], evaluations: dict[str, Any],
         best: dict[str, Any] | None = None) -> dict[str, Any]:
    accuracy = {
        name: {"mean": ev.get("accuracy_mean"), "std": ev.get("accuracy_std"),
               "budget": budget_of(ev)}
        for name, ev in evaluations.items() if isinstance(ev, dict)
    }
    # the numbers other evaluators name as their headline (compare.headlines)
    numbers = {col: cell["value"] for name, ev in evaluations.items()
               for col, cell in headlines(str(name), ev).items() if "value" in cell}
    return {
        "variant": variant.name,
        "values": dict(variant.values),
        "status": status,
        "accuracy": accuracy,
        "headlines": numbers,
        # output.evaluate_every: MTT's max over the checkpoints, beside (never instead of)
        # the final accuracy, with its label
        "best_of": {name: {"mean": e["accuracy_mean"], "std": e.get("accuracy_std"),
                           "iteration": e.get("iteration"), "label": e["label"]}
                    for name, e in best_of_entries({"best_of": best or {}}).items()},
        "iterations": iterations,
        "final_losses": dict(losses),
        "path": str(path),
    }


def run_sweep(
    sweep: Sweep,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    dry_run: bool = False,
    registry: Registry | None = None,
    on_variant: Callable[[int, int, Variant], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every variant and return one row per variant (also written as a table).

    Rows hold the variant's grid values, accuracy mean/std of each evaluator, iterations,
    final losses and the synthetic set's path. With ``resume`` a variant whose set exists
    with evaluations is read back instead of run, and an interrupted one continues from
    its checkpoint. ``dry_run`` returns the planned rows without running or writing.
    """
    # the engine pulls in torch-heavy modules; keep import lazy
    from ..run.engine import CHECKPOINT, LEGACY_CHECKPOINT, run

    registry = registry or default_registry()
    root = Path(out_dir) if out_dir is not None else Path("runs") / sweep.name
    variants = sweep.variants()
    rows: list[dict[str, Any]] = []
    for i, v in enumerate(variants):
        run_dir = root / v.name
        final = run_dir / v.recipe.output.file
        if on_variant is not None:
            on_variant(i + 1, len(variants), v)
        if dry_run:
            rows.append(_row(v, final, "planned", v.recipe.synthetic.iterations, {}, {}))
            continue
        meta = _finished(final, v.recipe) if resume else None
        if meta is not None:
            rows.append(_row(v, final, "skipped", meta.get("iterations"),
                             meta.get("final_losses") or {}, meta.get("evaluations") or {},
                             meta.get("best_of")))
            continue
        # resume: continue a checkpoint, or redo a set whose evaluation never finished
        redo = resume and final.is_file() and not any(
            (run_dir / name).exists() for name in (CHECKPOINT, LEGACY_CHECKPOINT))
        # a variant not started yet starts now; one with a checkpoint continues from it
        cont = resume and (run_dir / CHECKPOINT).exists()
        result = run(v.recipe, device=device, out=run_dir, resume=cont, overwrite=redo,
                     progress=progress, registry=registry)
        rows.append(_row(v, result.synthetic_path, "ran", result.iterations,
                         result.final_losses, result.evaluations, result.best_of))
    if not dry_run:
        write_results(root, rows, sweep)
    return rows


def _fmt_acc(acc: dict[str, Any]) -> str:
    mean, std = acc.get("mean"), acc.get("std")
    if mean is None:
        return "–"
    budget = acc.get("budget")  # protocol and networks x epochs behind the number
    return f"{mean:.2f} ± {std or 0.0:.2f}" + (f" ({budget})" if budget else "")


def _fmt_best(best: dict[str, Any] | None) -> str:
    if not best:
        return "–"
    return (f"{best['mean']:.2f} ± {best.get('std') or 0.0:.2f} ({best['label']}, "
            f"at iteration {best.get('iteration', '?')})")


def format_table(rows: list[dict[str, Any]], fmt: str = "markdown") -> str:
    """Rows of :func:`run_sweep` as a table: ``markdown`` or ``json``.

    Markdown columns: variant, each grid key, each evaluator's accuracy (%, mean ± std over
    its networks, with the protocol and budget that produced it), where a variant scored
    evaluation checkpoints (``output.evaluate_every``) each evaluator's labelled best-of
    beside it, the headline numbers
    other evaluators name (``compare.headlines``), iterations, each final loss.
    """
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=False)
    if fmt != "markdown":
        raise ValueError(f"unknown table format {fmt!r}; use markdown or json")
    keys = list(dict.fromkeys(k for r in rows for k in r["values"]))
    evals = list(dict.fromkeys(e for r in rows for e in r["accuracy"]))
    losses = list(dict.fromkeys(k for r in rows for k in r["final_losses"]
                                if k.startswith("loss")))
    numbers = list(dict.fromkeys(k for r in rows for k in r.get("headlines", {})))
    bests = list(dict.fromkeys(e for r in rows for e in r.get("best_of", {})))
    head = ["variant", *keys, *(f"{e} acc %" for e in evals),
            *(f"{e} best_of acc %" for e in bests), *numbers, "iterations", *losses]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"]]
        cells += [format_value(r["values"].get(k, "")) for k in keys]
        cells += [_fmt_acc(r["accuracy"].get(e, {})) for e in evals]
        cells += [_fmt_best(r.get("best_of", {}).get(e)) for e in bests]
        cells += [f"{r['headlines'][k]:.4g}" if k in r.get("headlines", {}) else "–"
                  for k in numbers]
        cells.append("–" if r["iterations"] is None else str(r["iterations"]))
        cells += [f"{r['final_losses'][k]:.4g}" if k in r["final_losses"] else "–"
                  for k in losses]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(root: Path, rows: list[dict[str, Any]], sweep: Sweep | None = None) -> None:
    """Write ``results.md`` and ``results.json`` into ``root`` atomically."""
    title = f"# Sweep {sweep.name}\n\nbase: `{sweep.base}`\n\n" if sweep is not None else ""
    md = title + format_table(rows, "markdown")
    js = format_table(rows, "json") + "\n"
    atomic_write(root / RESULTS_MD, lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    atomic_write(root / RESULTS_JSON, lambda tmp: Path(tmp).write_text(js, encoding="utf-8"))
