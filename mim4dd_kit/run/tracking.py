"""How a run drives its experiment trackers (the ``loggers`` plugin kind, entry-point group
``mdk.loggers``; the contract a tracker implements is :mod:`mim4dd_kit.api.loggers`):
built from the recipe's ``loggers:`` list before any data is loaded, called on rank 0.
See docs/following-runs.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..api import ComponentRef
from ..api.loggers import TrackedRun, evaluation_scalars

log = logging.getLogger("mim4dd_kit.tracking")


class Trackers:
    """The trackers of one run, called in recipe order."""

    def __init__(self, trackers: Sequence[tuple[str, Any]] = ()):
        self.trackers = list(trackers)
        self.total = 0
        self._last_image = -1

    @classmethod
    def build(cls, refs: Sequence[ComponentRef], registry: Any) -> Trackers:
        return cls([(ref.name, registry.build("loggers", ref)) for ref in refs])

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, run: TrackedRun) -> None:
        self.total = run.iterations
        for _, t in self.trackers:
            t.start(run)

    def iteration(self, step: int, logs: dict[str, float],
                  grid: Callable[[], np.ndarray]) -> None:
        if not self.trackers:
            return
        picture = None
        for _, t in self.trackers:
            t.log_scalars(step, dict(logs))
            every = int(getattr(t, "images_every", 0) or 0)
            if (every and step % every == 0) or step == self.total:
                picture = grid() if picture is None else picture
                t.log_image(step, picture)

    def evaluations(self, step: int, evaluations: dict[str, Any]) -> None:
        for _, t in self.trackers:
            if evaluations:
                t.log_evaluations(step, evaluations)

    def best_of(self, step: int, best: dict[str, dict[str, Any]]) -> None:
        """MTT's "best of" (mim4dd_kit/run/best_of.py) as scalars named for what they are:
        ``eval/<evaluator>/best_of/accuracy_mean`` (and its std and iteration)."""
        keys = ("accuracy_mean", "accuracy_std", "iteration", "checkpoints")
        scalars = evaluation_scalars({f"{name}/best_of": {k: e[k] for k in keys if k in e}
                                      for name, e in best.items()})
        if scalars:
            for _, t in self.trackers:
                t.log_scalars(step, scalars)

    def finish(self, status: str) -> None:
        """Close every tracker; one failing to close does not keep the others open."""
        for name, t in self.trackers:
            try:
                t.finish(status)
            except Exception as exc:  # closing must not hide the run's own outcome
                if status == "finished":
                    raise
                log.warning("logger %s could not close: %s: %s", name, type(exc).__name__,
                            exc)
