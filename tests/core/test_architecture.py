"""The package's layers hold: import-linter's contract (pyproject.toml) and no cycles."""

import subprocess
import sys
from pathlib import Path

import pytest

# import-linter and grimp come with the dev extra (pyproject.toml)
grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[2]


def test_layers_contract_is_kept():
    pytest.importorskip("importlinter")
    # in a process of its own: import-linter reconfigures logging when it runs
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(
                        child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles():
    graph = grimp.build_graph("mim4dd_kit", exclude_type_checking_imports=True, cache_dir=None)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.b", imported="p.c")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_contracts_is_a_deprecated_reexport_of_the_api():
    import importlib
    import sys

    import mim4dd_kit.api as api

    sys.modules.pop("mim4dd_kit.contracts", None)
    with pytest.warns(DeprecationWarning, match="mim4dd_kit.api"):
        contracts = importlib.import_module("mim4dd_kit.contracts")
    assert contracts.Params is api.Params
    assert contracts.RunContext is api.RunContext
    assert contracts.DDLoss is api.DDLoss


def test_registry_fills_base_defaults_into_a_duck_typed_plugin():
    from mim4dd_kit.api import DDLoss, Evaluator, conform, trait

    class OldLoss:  # written against the earlier duck-typed contract
        def compute(self, syn, iteration, want_features):
            return None

    class Shardable(OldLoss):
        shardable = True

    loss = conform(OldLoss(), "dd_losses")
    assert (loss.learns_lr, loss.initial_lr, loss.image_steps) == (False, 0.01, 1)
    assert loss.init_images(None) is None and loss.after_step(None) is None
    assert trait(OldLoss, "dd_losses", "shardable") is False
    assert trait(Shardable, "dd_losses", "shardable") is True
    class OldEvaluator:
        def evaluate(self, request, registry, progress=None):
            return {}

    assert conform(OldEvaluator(), "evaluators").planned_epochs(None) is None
    built_in = DDLoss(None, ctx=None)
    assert conform(built_in, "dd_losses") is built_in
    assert Evaluator(None).planned_epochs(None) is None


def test_regularizer_defaults_read_only_declared_parameters():
    from torch import nn

    from mim4dd_kit.api import Params, Regularizer, conform

    class WithCritic(Params):
        critic_steps: int = 2
        critic_warmup: int = 5
        diagnostics_every: int = 10
        tap: str = "pre_pool"

    class OldRegularizer(nn.Module):  # no base class, as before the api package
        def __init__(self, params):
            super().__init__()
            self.params = params

    reg = conform(OldRegularizer(WithCritic()), "regularizers")
    assert (reg.critic_steps(0), reg.critic_steps(1)) == (7, 2)
    assert reg.diagnostics_every() == 10 and reg.image_scale() is None
    assert reg.diagnostics() == {} and dict(reg.last_logs) == {}
    assert Regularizer.feature_tap(WithCritic()) == "pre_pool"
    bare = conform(OldRegularizer(Params()), "regularizers")
    assert (bare.critic_steps(0), bare.diagnostics_every()) == (0, 0)
    assert Regularizer.feature_tap(Params()) == "output"
