"""Plugin discovery: built-ins, the example plugin, broken and clashing plugins."""

import sys

import pytest

from mim4dd_kit.config.registry import KINDS, Registry, default_registry
from mim4dd_kit.core.errors import PluginError

BUILTINS = {
    "datasets": {"fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "digits",
                 "tensor_file"},
    "backbones": {"convnet", "mlp", "convnet_d4", "alexnet", "vgg11", "resnet18", "lenet"},
    "critics": {"identity", "linear", "mlp"},
    "dd_losses": {"dm", "bptt", "cafe"},
    "regularizers": {"mim4dd"},
    "evaluators": {"train_from_scratch"},
    "augmentations": {"dsa", "none"},
}


def _fake_dist(root, name, entries: dict[str, dict[str, str]]):
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    text = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items())
        for group, items in entries.items()
    )
    (info / "entry_points.txt").write_text(text)


def test_builtins_are_registered_and_importable():
    infos = default_registry().describe()
    by_kind = {k: {i.name for i in infos if i.kind == k and i.package == "mim4dd_kit"}
               for k in KINDS}
    for kind, names in BUILTINS.items():
        assert names <= by_kind[kind], kind
    assert all(i.error is None for i in infos if i.package == "mim4dd_kit")
    assert all(i.description for i in infos if i.package == "mim4dd_kit")


def test_example_plugin_is_discovered():
    reg = default_registry()
    info = [i for i in reg.describe("backbones") if i.name == "convnet_gap"]
    assert info and info[0].package == "mdk_plugin_example" and info[0].error is None


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    (tmp_path / "fake_ok.py").write_text(
        "from mim4dd_kit.api import Params\n"
        "class Thing:\n    '''A fine thing.'''\n    class Params(Params):\n        pass\n"
        "class NoParams:\n    '''No parameters model.'''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_dist(tmp_path, "broken_pkg", {"mdk.backbones": {
        "broken": "no_such_module_xyz:Net", "noparams": "fake_ok:NoParams"}})
    _fake_dist(tmp_path, "clash_a", {"mdk.critics": {"dup": "fake_ok:Thing"}})
    _fake_dist(tmp_path, "clash_b", {"mdk.critics": {"dup": "fake_ok:Thing"}})
    return Registry(path=[str(tmp_path), *sys.path])


def test_broken_plugins_are_listed_and_skipped(fake_env):
    infos = {i.name: i for i in fake_env.describe("backbones", check=True)}
    assert "no_such_module_xyz" in infos["broken"].error
    assert "broken_pkg" in infos["broken"].error
    assert "no nested Pydantic model called Params" in infos["noparams"].error
    assert infos["convnet"].error is None  # the others keep working
    # without check nothing is imported: a module that cannot be found is still reported
    # (its import is tried), a class without Params is listed by its docstring
    quick = {i.name: i for i in fake_env.describe("backbones")}
    assert "no_such_module_xyz" in quick["broken"].error
    assert quick["noparams"].error is None
    assert quick["noparams"].description == "No parameters model."
    with pytest.raises(PluginError, match="failed to import"):
        fake_env.load("backbones", "broken")


def test_name_clash_is_an_error_naming_both_packages(fake_env):
    with pytest.raises(PluginError, match="clash_a.*clash_b|clash_b.*clash_a"):
        fake_env.load("critics", "dup")
    assert fake_env.load("critics", "clash_a:dup").__name__ == "Thing"


def test_unknown_name_suggests_closest():
    with pytest.raises(PluginError, match="did you mean 'linear'"):
        default_registry().load("critics", "linaer")
    with pytest.raises(PluginError, match="unknown plugin kind"):
        default_registry().entries("widgets")


def test_build_validates_params():
    reg = default_registry()
    critic = reg.build("critics", {"name": "linear", "out_dim": 5}, in_features=3)
    assert critic.out_dim == 5
    with pytest.raises(PluginError, match="could not be built"):
        reg.build("backbones", {"name": "convnet", "depth": 9}, channels=1, num_classes=2,
                  image_size=(8, 8))


def test_schema_is_made_despite_a_name_clash_with_a_warning(fake_env):
    from mim4dd_kit.config.schema import recipe_json_schema

    notes: list[str] = []
    schema = recipe_json_schema(fake_env, warnings=notes)
    critics = schema["$defs"]["CriticRef"]["then"]["enum"]
    assert {"clash_a:dup", "clash_b:dup", "linear"} <= set(critics) and "dup" not in critics
    assert len(notes) == 1 and "'dup'" in notes[0] and "clash_a and clash_b" in notes[0]


def test_messages_name_one_plugin_of_each_kind():
    from mim4dd_kit.config.registry import singular

    assert [singular(k) for k in KINDS] == [
        "dataset", "backbone", "critic", "dd loss", "regularizer", "evaluator",
        "augmentation", "coreset", "logger"]
    with pytest.raises(PluginError, match="no dd loss plugin named 'nope'"):
        default_registry().load("dd_losses", "nope")
