"""Helpers the test modules import (``from helpers import ...``): the tiny recipe, run
set-up and the exactness checks shared by the DD-loss tests."""

import copy
import gzip
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mim4dd_kit import testing

#: the conformance checks' tiny recipe (digits, ConvNet width 8 depth 2, 6 iterations)
TINY = {**copy.deepcopy(testing.TINY), "name": "tiny"}


#: the repository's benchmarks folder (scripts, not a package)
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes``: mapping values merge one level deep, others replace."""
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def distilled(recipe, out, **kwargs):
    """Run ``recipe`` into ``out`` quietly and load the synthetic set it wrote."""
    from mim4dd_kit.io.synthetic import load_synthetic
    from mim4dd_kit.run.engine import run

    return load_synthetic(run(recipe, out=out, progress=False, **kwargs).synthetic_path)


def assert_resume_is_exact(recipe, tmp_path, stop_after: int = 5) -> None:
    """Interrupt a run after ``stop_after`` iterations, refuse a plain restart, resume it,
    and require the images (and learned lr) of an uninterrupted run."""
    from mim4dd_kit.core.errors import RunError
    from mim4dd_kit.run.engine import run

    straight = distilled(recipe, tmp_path / "straight")

    def interrupt(iteration, logs):
        if iteration == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "resumed", progress=False, callbacks=[interrupt])
    with pytest.raises(RunError):
        run(recipe, out=tmp_path / "resumed", progress=False)
    resumed = distilled(recipe, tmp_path / "resumed", resume=True)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.lr == straight.lr


#: MIM4DD read literally with a small critic, as the loss tests add it to a tiny recipe
MIM = {"name": "mim4dd", "preset": "literal", "lambda": 0.8,
       "critic": {"name": "linear", "out_dim": 16}}


def set_up_run(recipe, tmp_path):
    """A CPU :class:`~mim4dd_kit.run.engine.Run` of ``recipe`` with its components built."""
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.run.engine import Run

    r = Run(recipe, tmp_path, torch.device("cpu"), default_registry())
    r.setup()
    return r


def assert_loss_decreases(run, steps: int = 5, probe_seed: int = 99) -> None:
    """``steps`` engine steps (finite logs) must lower the DD loss of a fixed probe: the
    same seed, hence the same network, batch and draws, before and after."""

    def probe() -> float:
        torch.manual_seed(probe_seed)
        return float(run.loss.compute(run.syn, 0, want_features=False).loss.detach())

    before = probe()
    torch.manual_seed(0)
    for it in range(steps):
        assert all(math.isfinite(v) for v in run.step(it).values())
    assert probe() < before


def assert_lambda_zero_is_exact(recipe_with, tmp_path):
    """``recipe_with(regularizer)`` builds the method's recipe. With MIM4DD at λ = 0 the run
    must give the method's images (and learned lr) bit for bit, with the literal setting
    and with the default one; at λ 0.8 other images. Returns the method's own set."""
    base = distilled(recipe_with(None), tmp_path / "base")
    zero = distilled(recipe_with({**MIM, "lambda": 0.0}), tmp_path / "zero")
    zero_default = distilled(recipe_with({"name": "mim4dd", "lambda": 0.0}),
                             tmp_path / "zero_default")
    full = distilled(recipe_with(MIM), tmp_path / "full")
    assert torch.equal(base.images, zero.images) and base.lr == zero.lr
    assert torch.equal(base.images, zero_default.images) and base.lr == zero_default.lr
    assert not torch.equal(base.images, full.images)
    return base


def inner_training_of_next_call(loss, syn, iteration: int) -> tuple[bool, int, bool]:
    """Call a persistent-network loss once more, counting its network's optimizer steps.

    Returns (the network is the one from before, SGD steps taken, parameters changed).
    """
    net = loss.net
    before = [p.detach().clone() for p in net.parameters()]
    steps = []
    step = loss.schedule.opt.step
    loss.schedule.opt.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
    loss.compute(syn, iteration, False)
    changed = any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    return loss.net is net, len(steps), changed


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz), the format
    ``mim4dd_kit.datasets.idx.read_idx`` reads."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, a.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
