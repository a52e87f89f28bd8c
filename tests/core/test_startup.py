"""`mdk validate` and `mdk list-plugins` start without importing torch: parameters models
live in torch-free modules reached through the optional `mdk.params.<kind>` entry points,
and plugin descriptions are read from the sources (docs/architecture.md, "Start-up time")."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from mim4dd_kit.config.registry import KINDS, PARAMS_GROUPS, Registry, default_registry
from mim4dd_kit.core.errors import PluginError

REPO = Path(__file__).parents[2]
RECIPES = [p for p in sorted((REPO / "recipes").rglob("*.yaml")) if "sweeps" not in p.parts]


def _in_fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (nothing imported yet) from the repository root;
    it prints what it checks on its last line."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _cli_without_torch(*argv: str) -> dict:
    """Run ``mdk argv`` in-process in a fresh interpreter; its exit code, stdout and
    whether torch (or any torch submodule) was imported by the time it returned."""
    done = _in_fresh_python(f"""
        import contextlib, io, json, sys
        from mim4dd_kit.cli import main
        sys.argv = ["mdk", *{list(argv)!r}]
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out):
            try:
                main()
            except SystemExit as exc:
                code = exc.code or 0
        torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print(json.dumps({{"code": code, "out": out.getvalue(), "torch": torch[:5]}}))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_validate_does_not_import_torch():
    recipe = "recipes/fashion_mnist_ipc10_dm_mim.yaml"
    res = _cli_without_torch("validate", recipe)
    assert res["code"] == 0 and f"{recipe}: valid" in res["out"]
    assert res["torch"] == []


def test_list_plugins_does_not_import_torch_and_check_does():
    res = _cli_without_torch("list-plugins", "--json")
    rows = json.loads(res["out"])
    assert res["code"] == 0 and res["torch"] == []
    # the example plugins have no mdk.params entries: still listed, still not imported
    names = {(r["kind"], r["name"]) for r in rows}
    assert {("backbones", "convnet_gap"), ("dd_losses", "moment_matching"),
            ("regularizers", "mim4dd")} <= names
    table = _cli_without_torch("list-plugins", "--kind", "critics")
    assert table["code"] == 0 and table["torch"] == [] and "linear" in table["out"]
    checked = _cli_without_torch("list-plugins", "--json", "--check")
    assert checked["code"] == 0 and "torch" in checked["torch"]
    assert json.loads(checked["out"]) == rows  # same names, descriptions, no errors


def test_every_shipped_recipe_validates_without_torch():
    done = _in_fresh_python(f"""
        import sys
        from mim4dd_kit.config.recipe import load_recipe
        for path in {[str(p) for p in RECIPES]!r}:
            load_recipe(path)
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:5])
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[]"


def test_params_modules_import_without_torch():
    modules = sorted({ep.module_name for kind in KINDS
                      for ep in default_registry()._group(PARAMS_GROUPS[kind])})
    assert len(modules) == len(KINDS)  # one params module per kind
    done = _in_fresh_python(f"""
        import importlib, sys
        for m in {modules!r}:
            importlib.import_module(m)
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))[:5])
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[]"


def test_every_builtin_params_entry_is_its_class_params():
    reg = default_registry()
    checked = 0
    for kind in KINDS:
        for ep in reg.entries(kind):
            if ep.distro.name != "mim4dd_kit":
                continue
            pep = reg.params_entry(kind, ep)
            assert pep is not None, f"{kind} {ep.name} has no {PARAMS_GROUPS[kind]} entry"
            assert reg.params_model(kind, ep.name) is reg.load(kind, ep.name).Params, \
                f"{kind} {ep.name}: {pep.module_name}:{pep.object_name} is not its Params"
            checked += 1
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert checked == sum(len(groups[g]) for g in KINDS.values()) >= 38
    # and no params entry names a component that does not exist
    for kind in KINDS:
        for pep in reg._group(PARAMS_GROUPS[kind]):
            assert pep.name in reg.names(kind), (kind, pep.name)


def test_descriptions_read_from_the_sources_match_the_imported_docstrings():
    reg = default_registry()
    quick = reg.describe()
    assert quick == reg.describe(check=True)
    assert all(i.description and i.error is None for i in quick)


def test_entry_points_are_read_in_one_walk(monkeypatch):
    import entrypoints

    walks = []
    real = entrypoints.iter_files_distros

    def counted(*args, **kwargs):
        walks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(entrypoints, "iter_files_distros", counted)
    reg = Registry()
    for kind in KINDS:
        reg.entries(kind)
    reg.describe()
    assert len(walks) == 1


@pytest.fixture
def params_entry_env(tmp_path, monkeypatch):
    """A package whose component cannot be imported (it raises), but whose parameters
    model can through its mdk.params entry; and one whose entry names another model."""
    (tmp_path / "fast_params.py").write_text(
        "from mim4dd_kit.api import Params\n"
        "class WidgetParams(Params):\n    size: int = 3\n"
        "class OtherParams(Params):\n    size: int = 3\n")
    (tmp_path / "slow_widget.py").write_text(
        "raise RuntimeError('the component module was imported')\n")
    (tmp_path / "drifted.py").write_text(
        "from mim4dd_kit.api import Params\n"
        "from fast_params import WidgetParams\n"
        "class Critic:\n    '''A critic whose params entry names another model.'''\n"
        "    Params = WidgetParams\n"
        "    def __init__(self, params, *, in_features):\n        self.params = params\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    info = tmp_path / "widgets-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: widgets\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mdk.critics]\nwidget = slow_widget:Widget\ndrifted = drifted:Critic\n"
        "[mdk.params.critics]\nwidget = fast_params:WidgetParams\n"
        "drifted = fast_params:OtherParams\n")
    return Registry(path=[str(tmp_path), *sys.path])


def test_a_params_entry_validates_without_importing_the_component(params_entry_env):
    reg = params_entry_env
    assert reg.validate("critics", {"name": "widget", "size": 5}).size == 5
    assert "slow_widget" not in sys.modules
    with pytest.raises(Exception, match="size"):
        reg.validate("critics", {"name": "widget", "size": "big"})
    with pytest.raises(PluginError, match="failed to import slow_widget"):
        reg.build("critics", {"name": "widget"}, in_features=3)


def test_a_params_entry_naming_another_model_is_refused_at_build(params_entry_env):
    with pytest.raises(PluginError, match="fast_params.OtherParams.*fast_params.WidgetParams"
                       ".*one model"):
        params_entry_env.build("critics", {"name": "drifted"}, in_features=3)
