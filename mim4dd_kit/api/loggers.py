"""The ``loggers`` plugin kind: experiment trackers (entry-point group ``mdk.loggers``).

A recipe's ``loggers:`` list names the trackers that follow a run, e.g.
``loggers: [{name: tensorboard}, {name: mlflow, tracking_uri: http://host:5000}]``.
Each is constructed as ``cls(params)`` before any data is loaded (so a missing package is
an error before the run starts) and is then called, on rank 0 only:

- ``start(run: TrackedRun)``: once, before the first iteration (``run.start`` > 0 when
  the run resumes from a checkpoint); log the resolved recipe as parameters here;
- ``log_scalars(step, values)``: after every iteration, every key of the iteration's
  logs (the losses, the regularizer's terms, a learned lr...);
- ``log_image(step, grid)``: the image grid of the synthetic set (one row per class,
  de-normalised, an (H, W, C) float array in [0, 1]) every ``images_every`` iterations
  and after the last one;
- ``log_evaluations(step, evaluations)``: once, the evaluators' results;
- ``finish(status)``: ``"finished"``, ``"failed"`` or ``"interrupted"``.

The toolkit drives them from ``mim4dd_kit/run/tracking.py``. The built-ins
(mim4dd_kit/loggers/) need optional packages; a missing one is a
:class:`~mim4dd_kit.core.errors.PluginError` naming the extra to install. See
docs/following-runs.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import PluginError
from .params import TrackerParams as TrackerParams  # defined there: needs neither numpy nor torch


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker learns about the run at its start."""

    run_dir: Path
    name: str
    recipe: dict[str, Any]
    start: int
    iterations: int


def missing_package(logger: str, module: str, extra: str) -> PluginError:
    return PluginError(
        f"logger {logger!r} needs the {module} package, which is not installed: "
        f"pip install 'mim4dd_kit[{extra}]'"
    )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as ``{"synthetic.ipc": 10, "evaluators.0.name": ...}``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: "{}"}
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def evaluation_scalars(evaluations: dict[str, Any]) -> dict[str, float]:
    """The numbers of the evaluators' results, as ``eval/<evaluator>/<key>``."""
    out = {}
    for name, result in evaluations.items():
        if not isinstance(result, dict):
            continue
        for key, value in flatten(result).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                if np.isfinite(value):
                    out[f"eval/{name}/{key.replace('.', '/')}"] = float(value)
    return out


def evaluations_json(evaluations: dict[str, Any]) -> str:
    return json.dumps(evaluations, indent=2, default=str)
