"""Progress displays: evaluations' network-epochs (a bar or plain log lines) and long
analyses' optimiser steps (a bar), fed by the signals of :mod:`mim4dd_kit.core.progress`.

An evaluation trains networks on the synthetic set; its work is networks × epochs. The
training loops (:func:`~mim4dd_kit.training.loop.train_network`,
:func:`~mim4dd_kit.training.batched.train_stacked`) call
:func:`~mim4dd_kit.core.progress.epochs_done` after every epoch; inside
:meth:`EvaluationProgress.evaluation` that advances the evaluation's bar (with ETA) on a
terminal, else logs plain lines through :mod:`logging` (logger ``mim4dd_kit.evaluate``)
every twentieth of the work and at least every minute. Outside an evaluation
``epochs_done`` does nothing.

Long analyses (the feature network ``mdk baseline`` trains, the critics of
``mi_estimate``) count optimiser steps instead; :func:`step_bar` draws them as one bar
with an ETA.

An evaluator tells the size of its work by an optional method
``planned_epochs(request) -> int`` (network-epochs this process will train); without it
the bar counts without a total.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..core.progress import counting_epochs, reporting
from .runlog import ProgressLines

log = logging.getLogger("mim4dd_kit.evaluate")


def planned_epochs(evaluator: Any, request: Any) -> int | None:
    """The evaluator's ``planned_epochs(request)``, or None when it does not say."""
    try:
        total = evaluator.planned_epochs(request)
    except Exception:  # a plugin's estimate must not stop its evaluation
        return None
    return int(total) if isinstance(total, int) and total > 0 else None


class EvaluationProgress:
    """One progress display for a sequence of evaluations (a Rich bar per evaluation on
    stderr when ``bar``, else plain log lines); use as a context manager."""

    def __init__(self, bar: bool, title: str = "evaluation"):
        self.bar, self.title = bar, title
        self._progress = None

    def __enter__(self) -> EvaluationProgress:
        if self.bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("network-epochs"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True))
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    @contextlib.contextmanager
    def evaluation(self, name: str, total: int | None) -> Iterator[None]:
        """Count the epochs trained inside the block towards evaluation ``name``."""
        label = f"{self.title} {name}"
        if self._progress is not None:
            bar, task = self._progress, self._progress.add_task(label, total=total)

            def advance(n: int) -> None:
                bar.update(task, advance=n)
        else:
            lines = ProgressLines(label, 0, total, every=0, seconds=60.0, logger=log,
                                  what="network-epochs", unit="epoch")
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                lines.update(done[0])
        with counting_epochs(advance):
            yield


class _StepBar:
    """A :func:`mim4dd_kit.core.progress.reporting` sink drawing one Rich bar with an ETA."""

    def __init__(self, bar: Any, clean: Callable[[str], str]):
        self.bar, self.clean = bar, clean
        self.task = bar.add_task("starting", total=0)

    def plan(self, steps: int, label: str) -> None:
        total = self.bar.tasks[0].total or 0
        self.bar.update(self.task, total=total + steps, description=self.clean(label))

    def advance(self, steps: int) -> None:
        self.bar.advance(self.task, steps)


@contextlib.contextmanager
def step_bar(console: Any, *, enabled: bool = True,
             clean: Callable[[str], str] = str) -> Iterator[None]:
    """Inside the block, the steps long analyses report are drawn on ``console`` as one
    transient bar (labels passed through ``clean``); nothing when not ``enabled``."""
    if not enabled:
        yield
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar, \
            reporting(_StepBar(bar, clean)):
        yield
