"""The ``mdk`` command line: argument parsing and printing over the library API.

Results go to stdout (one JSON document with ``--json``); progress, warnings and errors
go to stderr. Errors caused by input exit with code 2 and one paragraph, without a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import MdkError, RecipeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="mim4dd_kit: dataset distillation with the MIM4DD regularizer.",
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


def _guard(fn):
    """Turn toolkit errors into one paragraph on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except MdkError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; a run continues from its last checkpoint with --resume")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                "(run again with --debug for the traceback)", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"mim4dd_kit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    _state["debug"] = debug


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe value: key.path=value (repeatable)."),
]


@app.command()
@_guard
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluators.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Distill a data set as RECIPE says and write the synthetic set."""
    from .engine import run as run_recipe

    result = run_recipe(recipe, overrides=set_ or [], device=device, out=out_dir,
                        resume=resume, overwrite=overwrite, evaluate=not no_eval,
                        progress=not as_json and sys.stderr.isatty())
    summary = {
        "run_dir": str(result.run_dir),
        "synthetic": str(result.synthetic_path),
        "iterations": result.iterations,
        "final_losses": result.final_losses,
        "evaluations": result.evaluations,
    }
    if as_json:
        _print_json(summary)
        return
    out.print(f"synthetic set written to [bold]{result.synthetic_path}[/]")
    out.print("final losses: " + ", ".join(f"{k}={v:.5g}" for k, v in
                                          result.final_losses.items() if k.startswith("loss")))
    _print_evaluations(result.evaluations)


@app.command()
@_guard
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Check RECIPE and every component's parameters without loading data."""
    from .recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    parts = ", ".join(f"{k}={ref.name}" for k, ref in r.components())
    out.print(f"{recipe}: valid ({parts})", highlight=False)


@app.command()
@_guard
def schema(
    output: Annotated[Path | None, typer.Option("--out", help="Write to a file.")] = None,
) -> None:
    """Print the recipe JSON Schema (for editor completion)."""
    from .recipe import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


@app.command("list-plugins")
@_guard
def list_plugins_cmd(
    kind: Annotated[str | None, typer.Option(help="Only this kind, e.g. backbones.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every installed component; broken plugins are shown with their error."""
    from .registry import default_registry

    infos = default_registry().describe(kind)
    if as_json:
        _print_json([i.as_dict() for i in infos])
        return
    table = Table(title="mdk plugins")
    for col in ("kind", "name", "package", "version", "description"):
        table.add_column(col)
    for i in infos:
        desc = f"[red]BROKEN: {i.error}[/]" if i.error else i.description
        table.add_row(i.kind, i.name, i.package, i.version, desc)
    out.print(table)


def _print_evaluations(evaluations: dict[str, Any]) -> None:
    if not evaluations:
        return
    table = Table(title="evaluation")
    for col in ("evaluator", "accuracy (%)", "per model", "setting"):
        table.add_column(col)
    for name, res in evaluations.items():
        if "accuracy_mean" in res:
            acc = f"{res['accuracy_mean']:.2f} ± {res['accuracy_std']:.2f}"
            each = ", ".join(f"{a:.2f}" for a in res.get("accuracies", []))
        else:
            acc, each = "-", ""
        setting = ", ".join(f"{k}={res[k]}" for k in ("models", "epochs", "lr") if k in res)
        table.add_row(name, acc, each, setting)
    out.print(table)


@app.command()
@_guard
def evaluate(
    file: Annotated[Path, typer.Argument(help="Synthetic set (.safetensors).")],
    models: Annotated[int | None, typer.Option(help="Networks to train.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Network to train.")] = None,
    evaluator: Annotated[
        list[str] | None, typer.Option(help="Evaluator plugin (repeatable).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Data set plugin (needed for sets made elsewhere).")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root of the data set.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    seed: Annotated[int | None, typer.Option(help="Seed of the evaluation networks.")] = None,
    save: Annotated[bool, typer.Option(help="Store the results in the file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score a synthetic set by the evaluation protocol."""
    from .contracts import DatasetRef, EvaluatorRef
    from .evaluate import evaluate as evaluate_set
    from .registry import default_registry
    from .synthetic import load_synthetic

    registry = default_registry()
    refs = None
    overrides = {k: v for k, v in {"models": models, "epochs": epochs,
                                   "backbone": backbone}.items() if v is not None}
    if evaluator or overrides:
        recorded = (load_synthetic(file).metadata.get("recipe") or {}).get("evaluators")
        specs = ([{"name": e} for e in evaluator] if evaluator
                 else recorded or [{"name": "train_from_scratch"}])
        refs = []
        for spec in specs:
            spec = dict(spec)
            fields = registry.load("evaluators", spec["name"]).Params.model_fields
            spec.update({k: v for k, v in overrides.items() if k in fields})
            registry.validate("evaluators", spec)
            refs.append(EvaluatorRef.model_validate(spec))
    ds = None
    if dataset or data_root:
        if not dataset:
            recorded_ds = ((load_synthetic(file).metadata.get("recipe") or {})
                           .get("dataset") or {})
            dataset = recorded_ds.get("name")
            if not dataset:
                raise RecipeError("--data-root needs --dataset for a set made outside mdk")
        spec = {"name": dataset, **({"root": str(data_root)} if data_root else {})}
        registry.validate("datasets", spec)
        ds = DatasetRef.model_validate(spec)
    show = None if as_json else (
        lambda i, n, acc: err.print(f"  model {i}/{n}: {acc:.2f}%", highlight=False))
    result = evaluate_set(file, evaluators=refs, dataset=ds, device=device, seed=seed,
                          save=save, registry=registry, progress=show)
    for w in result["warnings"]:
        err.print(f"[yellow]warning:[/] {w}")
    if as_json:
        _print_json(result)
    else:
        _print_evaluations(result["evaluations"])


@app.command()
@_guard
def show(
    file: Annotated[Path, typer.Argument(help="Synthetic set (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a synthetic set's provenance."""
    from .synthetic import load_synthetic

    s = load_synthetic(file)
    counts = s.labels.bincount().tolist()
    summary = {"file": str(file), "images": list(s.images.shape), "classes": len(counts),
               "ipc": max(counts), "lr": s.lr, "made_by_mdk": s.made_by_mdk, **s.metadata}
    if as_json:
        _print_json(summary)
        return
    table = Table(title=str(file), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key in ("recipe", "components", "evaluations"):
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    for c in s.metadata.get("components", []):
        table.add_row(f"component {c['key']}", f"{c['name']} ({c['package']} {c['version']})")
    out.print(table)
    _print_evaluations(s.metadata.get("evaluations") or {})


@app.command()
@_guard
def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep file (base recipe + grid).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Sweep folder.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Skip finished variants, continue interrupted ones.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list the variants only.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Run every variant of a sweep file and tabulate their evaluations."""
    from .sweep import format_table, load_sweep, run_sweep

    spec = load_sweep(file)
    quiet = as_json or not sys.stderr.isatty()

    def announce(i: int, n: int, v) -> None:
        if not as_json:
            err.print(f"[{i}/{n}] {v.name}", highlight=False)

    rows = run_sweep(spec, out_dir=out_dir, device=device, resume=resume,
                     progress=not quiet, dry_run=dry_run, on_variant=announce)
    sys.stdout.write(format_table(rows, "json" if as_json else "markdown"))
    if as_json:
        sys.stdout.write("\n")


@app.command()
@_guard
def buffer(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file whose dd_loss is mtt.")],
    set_: SetOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Train (or find) the expert trajectories RECIPE's trajectory matching needs."""
    from .buffers import buffer_for_recipe

    info = buffer_for_recipe(recipe, overrides=set_ or [], device=device,
                             progress=not as_json and sys.stderr.isatty())
    if as_json:
        _print_json(info)
    else:
        out.print(f"expert buffer: [bold]{info['path']}[/] ({info['experts']} experts, "
                  f"{info['trained']} trained now)", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
