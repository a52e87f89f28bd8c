"""Installing the package into an environment that already has torch leaves torch alone.

The package declares compatible ranges (pyproject.toml); the exact tested versions live in
constraints.txt for the set-up scripts. The test builds the wheel and installs it, offline
(``--no-index``: nothing can be downloaded), into a fresh virtual environment that sees
this environment's packages, torch included; pip's report must list the toolkit alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import tomllib
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]


def _pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_dependencies_are_ranges_and_constraints_pin_the_installed_versions():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d for d in meta["dependencies"]}
    for name in ("torch", "torchvision"):
        assert "==" not in deps[name] and ">=" in deps[name] and "<" in deps[name], deps[name]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split("\n")
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == torch.__version__.split("+")[0]
    assert pins["torchvision"] == torchvision.__version__.split("+")[0]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup and "torch==" not in setup


@pytest.mark.slow
def test_wheel_installs_into_an_environment_with_torch_and_leaves_it(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT / "mim4dd_kit", src / "mim4dd_kit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = _pip("wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q",
                 "-w", str(tmp_path / "dist"), str(src))
    if built.returncode != 0 and "setuptools" in built.stderr:
        pytest.skip("setuptools is not installed here to build the wheel")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("mim4dd_kit-*.whl")

    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    target = Path(subprocess.run(
        [str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    # the user's environment: this one's packages (torch among them) are visible in it
    (target / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    done = _pip("--python", str(env / "bin" / "python"), "install", "--no-index", "-q",
                "--report", str(tmp_path / "report.json"), str(wheel))
    assert done.returncode == 0, done.stderr
    installed = [item["metadata"]["name"]
                 for item in json.loads((tmp_path / "report.json").read_text())["install"]]
    assert installed == ["mim4dd_kit"], installed  # no torch, no torchvision, nothing else
    probe = subprocess.run(
        [str(env / "bin" / "python"), "-c",
         "import json, torch, mim4dd_kit; print(json.dumps([torch.__version__, "
         "torch.__file__, mim4dd_kit.__file__]))"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    version, torch_file, kit_file = json.loads(probe.stdout)
    assert version == torch.__version__ and torch_file == torch.__file__  # the user's torch
    assert Path(kit_file).is_relative_to(env)  # the wheel's copy, not the editable one
