"""Every command of the README's "Using it" block runs as written, top to bottom.

The commands run in a scratch folder (with the repository's ``recipes/``) on a small copy of
Fashion-MNIST found through ``$MDK_DATA`` (200 training and 100 test images, taken from
Debian's files where installed, else made up in the same IDX format), with options appended
that only shrink the work: ``--set`` overrides, ``--models``/``--epochs``, ``--device cpu``.
A README command that stops working (a renamed option, a file an earlier line no longer
writes, an argument the parser refuses) fails this test.
"""

from __future__ import annotations

import glob
import gzip
import shlex
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mim4dd_kit.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")

_RUN = ["synthetic.iterations=3", "synthetic.batch_real=4", "backbone.width=8",
        "backbone.depth=2", "evaluators.0.models=1",
        "evaluators.0.epochs=1", "output.checkpoint_every=1"]
#: options appended to each subcommand: they shrink the work and change nothing else
SHRINK = {
    "run": [a for s in _RUN for a in ("--set", s)] + ["--device", "cpu"],
    "sweep": [a for s in _RUN for a in ("--set", s)] + ["--device", "cpu"],
    "buffer": [a for s in ("backbone.width=8", "backbone.depth=2", "dd_loss.num_experts=1",
                           "dd_loss.train_epochs=2", "dd_loss.max_start_epoch=1",
                           "dd_loss.expert_epochs=1") for a in ("--set", s)]
    + ["--device", "cpu"],
    "evaluate": ["--models", "1", "--epochs", "1", "--device", "cpu"],
    "baseline": ["--set", "features.epochs=1", "--set", "features.width=8", "--models", "1",
                 "--epochs", "1", "--device", "cpu"],
}


def readme_commands() -> list[str]:
    """The ``mdk`` lines of the README's "Using it" block, comments stripped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Using it", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("mdk ")]


def _idx(path: Path, array: np.ndarray) -> None:
    code = 0x0800 + array.ndim  # unsigned bytes
    header = struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def small_fashion_mnist(folder: Path, train: int = 20, test: int = 10) -> None:
    """``train``/``test`` images per class in Fashion-MNIST's IDX files under ``folder``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for per, prefix in ((train, "train"), (test, "t10k")):
        images = DEBIAN / f"{prefix}-images-idx3-ubyte.gz"
        if images.is_file():
            x = _read_idx(images)
            y = _read_idx(DEBIAN / f"{prefix}-labels-idx1-ubyte.gz")
            keep = np.concatenate([np.flatnonzero(y == c)[:per] for c in range(10)])
            x, y = x[keep], y[keep]
        else:
            y = np.repeat(np.arange(10), per)
            x = rng.integers(0, 256, (len(y), 28, 28))
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)


def _interrupted_run(args: list[str]) -> None:
    """Leave the state a Ctrl-C leaves: the run of ``args`` (without --resume) stopped
    after a checkpoint."""
    from mim4dd_kit.run.engine import run

    recipe = args[1]
    sets = [a for i, a in enumerate(args) if i and args[i - 1] in ("--set", "-s")]

    def stop(iteration, logs):
        if iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, overrides=sets, device="cpu", progress=False, callbacks=[stop])


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch):
    commands = readme_commands()
    assert len(commands) >= 15 and not any("[" in c for c in commands if "--set" not in c)
    small_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(work)
    monkeypatch.setenv("MDK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MDK_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    for command in commands:
        words = shlex.split(command)[1:]
        args = []
        for word in words:  # the shell's globbing
            args += sorted(glob.glob(word)) if "*" in word else [word]
        if "--resume" in args:
            shutil.rmtree(Path("runs") / Path(args[1]).stem)  # the line above finished it
            _interrupted_run([a for a in args if a != "--resume"] + SHRINK["run"])
        extra = list(SHRINK.get(args[0], []))
        if "mi_estimate" in args:  # fewer critic steps (each embeds a real batch)
            extra += ["--set", "mi_estimate.critic_steps=2"]
        started = time.perf_counter()
        res = runner.invoke(app, args + extra)
        print(f"{time.perf_counter() - started:6.1f} s  {command}")  # shown with -s
        assert res.exit_code == 0, f"{command}\n{res.output}"
        assert "Traceback" not in res.output, command
    # what the lines promise is there
    assert Path("recipe.schema.json").is_file() and Path("grid.png").is_file()
    assert Path("runs/fashion_mnist_ipc10_dm_mim/report.html").is_file()
    assert Path("runs/dm_mim_2proc/synthetic.safetensors").is_file()
