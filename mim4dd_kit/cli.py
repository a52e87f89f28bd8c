"""The ``mdk`` command line: argument parsing and printing over the library API.

Results go to stdout (one JSON document with ``--json``); progress, warnings and errors
go to stderr. Errors caused by input exit with code 2 and one paragraph, without a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import __version__
from . import cli_logging as _logging
from .cli_logging import GlobalOptionsGroup
from .core.errors import MdkError, RecipeError

app = typer.Typer(
    cls=GlobalOptionsGroup,
    add_completion=False,
    no_args_is_help=True,
    help="mim4dd_kit: dataset distillation with the MIM4DD regularizer.",
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False, "quiet": False}

# control characters (ANSI escape sequences start with ESC; C1 controls; bidirectional
# overrides) never reach the terminal from a file's metadata, a plugin or an error
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plain(value: Any) -> str:
    """``value`` as text without control characters (newlines and tabs stay)."""
    return _CONTROL.sub("", str(value))


def safe_markup(value: Any) -> str:
    """Untrusted text to embed in Rich markup: controls stripped, markup escaped."""
    return escape(plain(value))


def cell(value: Any) -> Text:
    """A table cell that Rich shows literally (no markup, no controls)."""
    return Text(plain(value))


@contextlib.contextmanager
def step_bar(enabled: bool = True):
    """Inside the block, long analyses draw a progress bar with an ETA on stderr (only on
    a terminal: redirected output and --json stay clean; mim4dd_kit/run/progress.py)."""
    from .run.progress import step_bar as draw_steps  # here: keeps `mdk --help` fast

    with draw_steps(err, enabled=enabled and err.is_terminal, clean=plain):
        yield


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
            # escaped: messages may hold brackets (e.g. pip install 'mim4dd_kit[plot]')
            err.print(f"[bold red]error:[/] {safe_markup(exc)}", markup=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; a run continues from its last checkpoint with --resume")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            from .config.registry import plugin_of_error

            try:
                plugin = plugin_of_error(exc)
            except Exception:
                plugin = None
            text = plain(exc)
            text = text if len(text) <= 2000 else text[:2000] + "…"
            if plugin is not None:
                err.print(
                    f"[bold red]error in {safe_markup(plugin)}:[/] "
                    f"{safe_markup(type(exc).__name__)}: {escape(text)} (a fault of that "
                    "plugin; report it to its package's authors; run again with --debug "
                    "for the traceback)", highlight=False)
            else:
                err.print(
                    f"[bold red]internal error:[/] {safe_markup(type(exc).__name__)}: "
                    f"{escape(text)} (run again with --debug for the traceback)",
                    highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"mim4dd_kit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks (also accepted after the subcommand).")] = False,
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True, help="More log lines (debug level).")] = 0,
    quiet: Annotated[int, typer.Option(
        "--quiet", "-q", count=True,
        help="No progress bars or progress lines; -qq: errors only.")] = 0,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", help="Level of the log lines on stderr: debug, info (default), "
        "warning or error.")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if log_level is not None and log_level.lower() not in _logging.LEVELS:
        raise typer.BadParameter(f"{plain(log_level)!r} is not one of "
                                 f"{', '.join(_logging.LEVELS)}", param_hint="'--log-level'")
    level = _logging.level_of(verbose, quiet, log_level)
    _state["quiet"] = level > _logging.logging.INFO
    _logging.configure(level, plain)


def _bar(as_json: bool = False) -> bool:
    """Whether to draw Rich progress bars: stderr is a terminal, no --json, no -q."""
    return not as_json and not _state["quiet"] and sys.stderr.isatty()


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
    nproc: Annotated[int, typer.Option(
        "--nproc-per-node", min=1,
        help="Spread the run over N processes on this machine (one per GPU on CUDA; "
        "docs/distributed.md).")] = 1,
) -> None:
    """Distill a data set as RECIPE says and write the synthetic set."""
    import os

    from .run.engine import run as run_recipe

    kwargs = dict(device=device, out=out_dir, resume=resume, overwrite=overwrite,
                  evaluate=not no_eval, progress=_bar(as_json))
    if nproc > 1:
        from .run.engine import launch_run

        result = launch_run(nproc, recipe, set_ or [], **kwargs)
    else:
        result = run_recipe(recipe, overrides=set_ or [], **kwargs)
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun: rank 0 reports
    summary = {
        "run_dir": str(result.run_dir),
        "synthetic": str(result.synthetic_path),
        "iterations": result.iterations,
        "final_losses": result.final_losses,
        "evaluations": result.evaluations,
    }
    if result.best_of:  # output.evaluate_every: MTT's reporting, beside the headline
        summary["evaluation_checkpoints"] = result.evaluation_checkpoints
        summary["best_of"] = result.best_of
    if as_json:
        _print_json(summary)
        return
    out.print(f"synthetic set written to [bold]{safe_markup(result.synthetic_path)}[/]")
    out.print("final losses: " + ", ".join(f"{k}={v:.5g}" for k, v in
                                          result.final_losses.items() if k.startswith("loss")))
    _print_evaluations(result.evaluations, {"best_of": result.best_of})


@app.command()
@_guard
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Check RECIPE and every component's parameters without loading data."""
    from .config.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    parts = ", ".join(f"{k}={ref.name}" for k, ref in r.components())
    out.print(f"{recipe}: valid ({parts})", highlight=False)


@app.command()
@_guard
def schema(
    output: Annotated[Path | None, typer.Option("--out", help="Write to a file.")] = None,
    link: Annotated[list[Path] | None, typer.Option(
        "--link", help="Make '# yaml-language-server: $schema=<--out file>' the first line "
        "of this recipe, for editors (repeatable; needs --out).")] = None,
) -> None:
    """Print the recipe JSON Schema (for editor completion)."""
    from .config.schema import link_recipe, recipe_json_schema
    from .core.files import atomic_write

    if link and output is None:
        raise RecipeError("--link needs --out: the recipe's first line points at that file")
    notes: list[str] = []
    text = json.dumps(recipe_json_schema(warnings=notes), indent=2)
    for note in notes:
        err.print(f"[yellow]warning:[/] {safe_markup(note)}", highlight=False)
    if output:
        atomic_write(output, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
        for recipe in link or []:
            line = link_recipe(recipe, output)
            err.print(f"{plain(recipe)}: {plain(line)}", markup=False, highlight=False)
        out.print(f"JSON Schema written to [bold]{safe_markup(output)}[/] (point your "
                  "editor's YAML support at it)", highlight=False)
    else:
        sys.stdout.write(text + "\n")


@app.command("list-plugins")
@_guard
def list_plugins_cmd(
    kind: Annotated[str | None, typer.Option(help="Only this kind, e.g. backbones.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Import every component to find broken plugins (slower: imports "
        "torch).")] = False,
) -> None:
    """List every installed component. Descriptions are read from the sources without
    importing them; with --check every component is imported and broken plugins are shown
    with their error."""
    from .config.registry import default_registry

    registry = default_registry()
    infos = registry.describe(kind, check=True) if check else registry.describe(kind)
    if as_json:
        _print_json([i.as_dict() for i in infos])
        return
    table = Table(title="mdk plugins")
    for col in ("kind", "name", "package", "version", "description"):
        table.add_column(col)
    for i in infos:
        desc = (Text(plain(f"BROKEN: {i.error}"), style="red") if i.error
                else cell(i.description))
        table.add_row(cell(i.kind), cell(i.name), cell(i.package), cell(i.version), desc)
    out.print(table)


def _number(value: Any) -> str:
    return (f"{value:.2f}" if isinstance(value, int | float) and not isinstance(value, bool)
            else plain(value)[:40])


def _print_evaluations(evaluations: Any, metadata: Any = None) -> None:
    """One row per headline number of every evaluation (``compare.headlines``: accuracy
    mean ± std, one accuracy per backbone, the numbers a result lists as ``headline``),
    with the training budget behind it; after each evaluator's rows, its ``best_of`` from
    ``metadata`` (output.evaluate_every), labelled as MTT's reporting."""
    if not evaluations or not isinstance(evaluations, dict):
        return  # a file's metadata may hold anything: show what has the expected shape
    from .analysis.compare import best_of_entries, best_of_text, budget_of, headlines

    best = best_of_entries(metadata)

    table = Table(title="evaluation")
    for col in ("evaluator", "result", "per model", "budget"):
        table.add_column(col)
    for name, res in evaluations.items():
        res = res if isinstance(res, dict) else {}
        budget = budget_of(res)
        shown = headlines(str(name), res)
        if not shown:
            table.add_row(cell(name), cell("-"), cell(""), cell(budget))
        for label, value in shown.items():
            if "text" in value:  # the protocol and budget: the budget column shows it
                continue
            if "mean" in value:
                text = f"{_number(value['mean'])} ± {_number(value['std'])}"
            else:
                text = f"{value['value']:.4g}"
            each = ""
            if label == f"{name} acc %" and isinstance(res.get("accuracies"), list):
                each = ", ".join(_number(a) for a in res["accuracies"])
            table.add_row(cell(label), cell(text), cell(each), cell(budget))
        if name in best:
            b = best[name]
            std = b.get("accuracy_std")
            table.add_row(cell(f"{name} best_of acc %"),
                          cell(f"{_number(b['accuracy_mean'])} ± {_number(std or 0.0)}"),
                          cell(""), cell(best_of_text(b)))
    out.print(table)


@app.command()
@_guard
def evaluate(
    file: Annotated[Path, typer.Argument(help="Synthetic set (.safetensors).")],
    models: Annotated[int | None, typer.Option(help="Networks to train.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Network to train: a name or a YAML component, e.g. "
        "'{name: convnet, width: 64}'.")] = None,
    evaluator: Annotated[
        list[str] | None, typer.Option(help="Evaluator plugin (repeatable).")
    ] = None,
    protocol: Annotated[str | None, typer.Option(
        help="train_from_scratch preset: mim4dd, dc, dsa, dm, mtt or bptt (each paper's "
             "own evaluation; --models/--epochs still override it).")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Data set plugin (needed for sets made elsewhere).")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root of the data set.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    seed: Annotated[int | None, typer.Option(help="Seed of the evaluation networks.")] = None,
    split: Annotated[str | None, typer.Option(
        help="Real images to score on: test, or validation (the training images the "
        "set's recipe held out).")] = None,
    save: Annotated[bool, typer.Option(help="Store the results in the file.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="With --save: replace stored evaluations of the same name.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="An evaluator's parameter: NAME.KEY=VALUE, e.g. "
        "cka.real_epochs=2 or mi_estimate.critic_steps=50 (repeatable).")] = None,
) -> None:
    """Score a synthetic set by the evaluation protocol."""
    from .api import DatasetRef, EvaluatorRef
    from .config.registry import default_registry
    from .io.synthetic import load_synthetic
    from .run.evaluate import evaluate as evaluate_set

    registry = default_registry()
    refs = None
    from .config.recipe import parse_yaml

    component = parse_yaml(backbone, "--backbone") if backbone is not None else None
    overrides = {k: v for k, v in {"models": models, "epochs": epochs, "backbone": component,
                                   "split": split}.items() if v is not None}
    if evaluator or overrides or protocol or set_:
        recorded = (load_synthetic(file).metadata.get("recipe") or {}).get("evaluators")
        specs = ([{"name": e} for e in evaluator] if evaluator
                 else recorded or [{"name": "train_from_scratch"}])
        if protocol:
            from .evaluators.train_from_scratch import with_protocol

            if not any(sp["name"] == "train_from_scratch" for sp in specs):
                raise RecipeError("--protocol applies to the train_from_scratch evaluator, "
                                  "which this evaluation does not run")
            specs = [with_protocol(sp, protocol) if sp["name"] == "train_from_scratch"
                     else sp for sp in specs]
        specs = _with_evaluator_sets(
            [s if isinstance(s, dict) else {"name": s} for s in specs], set_ or [])
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
                          save=save, registry=registry, progress=show, overwrite=overwrite,
                          progress_bar=_bar(as_json))
    for w in result["warnings"]:
        err.print(f"[yellow]warning:[/] {safe_markup(w)}", highlight=False)
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
    from .io.synthetic import load_synthetic

    s = load_synthetic(file)
    counts = s.labels.unique(return_counts=True)[1].tolist()  # not bincount: labels may be huge
    summary = {"file": str(file), "images": list(s.images.shape), "classes": len(counts),
               "ipc": max(counts), "lr": s.lr, "made_by_mdk": s.made_by_mdk, **s.metadata}
    if s.formation > 1:  # multi-formation: what is stored vs what networks train on
        f2 = s.formation ** 2
        summary.update({"stored_images": len(s.labels), "decoded_images": len(s.labels) * f2,
                        "decoded_ipc": max(counts) * f2})
    if as_json:
        _print_json(summary)
        return
    table = Table(title=cell(file), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key in ("recipe", "components", "evaluations"):
            continue
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        table.add_row(cell(key), cell(shown))
    components = s.metadata.get("components")
    for c in components if isinstance(components, list) else []:
        c = c if isinstance(c, dict) else {}
        table.add_row(cell(f"component {c.get('key')}"),
                      cell(f"{c.get('name')} ({c.get('package')} {c.get('version')})"))
    out.print(table)
    _print_evaluations(s.metadata.get("evaluations") or {}, s.metadata)


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
    set_: SetOpt = None,
) -> None:
    """Run every variant of a sweep file and tabulate their evaluations."""
    from .analysis.sweep import format_table, load_sweep, run_sweep

    spec = load_sweep(file, overrides=set_ or [])
    quiet = not _bar(as_json)

    def announce(i: int, n: int, v) -> None:
        if not as_json:
            err.print(f"[{i}/{n}] {v.name}", markup=False, highlight=False)

    rows = run_sweep(spec, out_dir=out_dir, device=device, resume=resume,
                     progress=not quiet, dry_run=dry_run, on_variant=announce)
    sys.stdout.write(format_table(rows, "json" if as_json else "markdown"))
    if as_json:
        sys.stdout.write("\n")


@app.command()
@_guard
def buffer(
    recipe: Annotated[Path, typer.Argument(
        help="Recipe YAML file whose dd_loss trains experts (mtt).")],
    set_: SetOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Train (or find) the expert trajectories RECIPE's trajectory matching needs."""
    from .run.buffer import buffer_for_recipe

    info = buffer_for_recipe(recipe, overrides=set_ or [], device=device,
                             progress=_bar(as_json))
    if as_json:
        _print_json(info)
    else:
        out.print(f"expert buffer: [bold]{safe_markup(info['path'])}[/] "
                  f"({info['experts']} experts, {info['trained']} trained now)",
                  highlight=False)



def _with_evaluator_sets(specs: list[dict], sets: list[str]) -> list[dict]:
    """``specs`` with ``--set NAME.KEY=VALUE`` applied to every evaluator called NAME."""
    from .config.recipe import apply_overrides
    from .core.errors import RecipeError

    specs = [dict(s) for s in specs]
    names = [str(s.get("name")) for s in specs]
    for text in sets:
        key = text.split("=", 1)[0].strip()
        name = key.split(".", 1)[0]
        if "=" not in text or "." not in key or name not in names:
            raise RecipeError(
                f"--set {text!r}: write EVALUATOR.KEY=VALUE for an evaluator of this "
                f"evaluation ({', '.join(dict.fromkeys(names))}; add others with "
                "--evaluator), e.g. cka.real_epochs=2"
            )
        for spec in (s for s in specs if s.get("name") == name):
            params = {k: v for k, v in spec.items() if k != "name"}
            apply_overrides(params, [text.split(".", 1)[1]])
            spec.clear()
            spec.update({"name": name, **params})
    return specs


def _evaluator_refs(registry, names: list[str] | None, models: int | None,
                    epochs: int | None) -> list | None:
    """Evaluator references for the new commands: named ones (default train_from_scratch
    when only --models/--epochs are given) with those overrides; None for the defaults."""
    from .api import EvaluatorRef

    overrides = {k: v for k, v in {"models": models, "epochs": epochs}.items()
                 if v is not None}
    if not names and not overrides:
        return None
    refs = []
    for name in names or ["train_from_scratch"]:
        fields = registry.load("evaluators", name).Params.model_fields
        spec = {"name": name, **{k: v for k, v in overrides.items() if k in fields}}
        registry.validate("evaluators", spec)
        refs.append(EvaluatorRef.model_validate(spec))
    return refs


BASELINE_SET_GROUPS = ("method", "features", "dataset")


def _baseline_specs(dataset: str, method: str, features: str | None, data_root: Path | None,
                    sets: list[str]) -> tuple[dict, dict, dict]:
    from .config.recipe import apply_overrides
    from .core.errors import RecipeError

    data: dict[str, Any] = {"method": {"name": method}, "features": {},
                            "dataset": {"name": dataset}}
    if features is not None:
        data["features"]["space"] = features
    if data_root is not None:
        data["dataset"]["root"] = str(data_root)
    for text in sets:
        group = text.split("=", 1)[0].split(".", 1)[0].strip()
        if group not in BASELINE_SET_GROUPS or "." not in text.split("=", 1)[0]:
            raise RecipeError(
                f"--set {text!r}: keys start with method., features. or dataset. "
                "(e.g. method.first=random, features.epochs=10, dataset.root=/data)"
            )
    apply_overrides(data, sets)
    return data["dataset"], data["method"], data["features"]


@app.command()
@_guard
def baseline(
    dataset: Annotated[str, typer.Argument(help="Data set plugin, e.g. fashion_mnist.")],
    method: Annotated[str, typer.Option(help="Coreset plugin: random, herding, k_center.")],
    ipc: Annotated[int, typer.Option(help="Images per class.")],
    out_file: Annotated[Path, typer.Option("--out", help="Output .safetensors file.")],
    seed: Annotated[int, typer.Option(help="Seed of the selection and feature network.")] = 0,
    features: Annotated[str | None, typer.Option(
        help="Feature space: pixels, or a backbone trained on the real data (default "
             "convnet).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="method.KEY=VALUE, features.KEY=VALUE or dataset.KEY=VALUE "
                            "(repeatable).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root of the data set.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    evaluate_it: Annotated[bool, typer.Option(
        "--evaluate", help="Score the set and store the result in it.")] = False,
    evaluator: Annotated[list[str] | None, typer.Option(
        help="Evaluator plugin for --evaluate (repeatable).")] = None,
    models: Annotated[int | None, typer.Option(help="Networks per evaluation.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per evaluation network.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Select a coreset baseline (real images per class) and write it as a synthetic set."""
    from .config.registry import default_registry
    from .io.synthetic import load_synthetic
    from .run.baseline import make_baseline
    from .run.evaluate import evaluate as evaluate_set

    registry = default_registry()
    ds, meth, feats = _baseline_specs(dataset, method, features, data_root, set_ or [])
    refs = _evaluator_refs(registry, evaluator, models, epochs) if evaluate_it else None
    say = None if as_json else (lambda text: err.print(text, markup=False, highlight=False))
    with step_bar(not as_json):
        path = make_baseline(ds, meth, ipc, seed, out_file, features=feats, device=device,
                             overwrite=overwrite, registry=registry, progress=say)
    evaluations: dict[str, Any] = {}
    if evaluate_it:
        show_model = None if as_json else (
            lambda i, n, acc: err.print(f"  model {i}/{n}: {acc:.2f}%", highlight=False))
        result = evaluate_set(path, evaluators=refs, device=device, save=True,
                              registry=registry, progress=show_model,
                              progress_bar=_bar(as_json))
        for w in result["warnings"]:
            err.print(f"[yellow]warning:[/] {safe_markup(w)}", highlight=False)
        evaluations = result["evaluations"]
    coreset = load_synthetic(path).metadata["coreset"]
    if as_json:
        _print_json({"file": str(path), "method": coreset["method"], "ipc": ipc,
                     "params": coreset["params"], "features": coreset["features"],
                     "images": len(coreset["indices"]), "evaluations": evaluations})
        return
    out.print(f"baseline written to [bold]{safe_markup(path)}[/] "
              f"({safe_markup(coreset['method'])}, ipc {ipc}, "
              f"{len(coreset['indices'])} images)", highlight=False)
    _print_evaluations(evaluations)


@app.command()
@_guard
def export(
    file: Annotated[Path, typer.Argument(help="Synthetic set (.safetensors).")],
    png: Annotated[Path, typer.Argument(help="Output PNG file.")],
    ncols: Annotated[int | None, typer.Option(
        min=1, help="Images per row (a class wraps onto more rows).")] = None,
    mean: Annotated[str | None, typer.Option(
        help="Per-channel mean, comma-separated (sets made outside mdk).")] = None,
    std: Annotated[str | None, typer.Option(
        help="Per-channel std, comma-separated (sets made outside mdk).")] = None,
) -> None:
    """Draw a synthetic set as a PNG grid: one row per class, de-normalised."""
    from .analysis.report import export_grid, parse_floats

    path = export_grid(file, png, ncols=ncols, mean=parse_floats(mean, "mean"),
                       std=parse_floats(std, "std"))
    out.print(f"image grid written to [bold]{safe_markup(path)}[/]", highlight=False)


@app.command()
@_guard
def compare(
    files: Annotated[list[Path], typer.Argument(help="Synthetic sets (.safetensors).")],
    evaluate_missing: Annotated[bool, typer.Option(
        "--evaluate", help="Compute evaluations the files do not have yet.")] = False,
    evaluator: Annotated[list[str] | None, typer.Option(
        help="Evaluator plugin that every row needs (repeatable; with --evaluate).")] = None,
    models: Annotated[int | None, typer.Option(help="Networks per new evaluation.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per new evaluation.")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Data set plugin for sets made outside mdk.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root of the data set.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    save: Annotated[bool, typer.Option(help="Store new evaluations in the files.")] = False,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Also write the table to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Tabulate synthetic sets side by side: method, data set, IPC, evaluations."""
    from .analysis.compare import compare as compare_sets
    from .analysis.compare import format_compare
    from .api import DatasetRef
    from .config.registry import default_registry
    from .core.files import atomic_write

    registry = default_registry()
    refs = _evaluator_refs(registry, evaluator, models, epochs) if evaluate_missing else None
    ds = None
    if dataset:
        spec = {"name": dataset, **({"root": str(data_root)} if data_root else {})}
        registry.validate("datasets", spec)
        ds = DatasetRef.model_validate(spec)
    say = None if as_json else (lambda text: err.print(text, markup=False, highlight=False))
    with step_bar(not as_json):
        rows = compare_sets(files, evaluate_missing=evaluate_missing, evaluators=refs,
                            dataset=ds, device=device, save=save, registry=registry,
                            progress=say)
    for r in rows:
        for w in r["warnings"]:
            err.print(f"[yellow]warning:[/] {safe_markup(r['file'])}: {safe_markup(w)}",
                      highlight=False)
    text = format_compare(rows, "json" if as_json else "markdown")
    text = text if as_json else plain(text)  # JSON escapes controls itself
    text = text if text.endswith("\n") else text + "\n"
    if out_file is not None:
        atomic_write(out_file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    sys.stdout.write(text)


@app.command()
@_guard
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder, or one synthetic-set file.")],
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Page to write (default: RUN_DIR/report.html or report.md).")] = None,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Write Markdown with PNG files beside it instead of HTML.")] = False,
    ncols: Annotated[int | None, typer.Option(min=1, help="Image grid columns.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write one page on a run: recipe, provenance, losses, images, evaluations."""
    from .analysis.report import build_report

    result = build_report(run_dir, out_file, markdown=markdown, ncols=ncols)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {safe_markup(w)}", highlight=False)
    if as_json:
        _print_json({"report": str(result.path), "files": [str(f) for f in result.files],
                     "warnings": result.warnings})
    else:
        out.print(f"report written to [bold]{safe_markup(result.path)}[/]", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
