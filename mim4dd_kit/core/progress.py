"""Progress signals from training loops to whatever displays them.

Two counts, each a no-op unless a display is installed, so library use pays nothing:

- *steps* of long analyses (the feature network of a coreset baseline, the critics of
  ``mi_estimate``): an analysis announces its work with :func:`planned`; loops call
  :func:`advance` after every optimiser step (a stacked step of N networks counts N). A
  sink installed with :func:`reporting` (``mim4dd_kit.run.progress.step_bar``, the
  command line's bar) receives both. Nested plans are not counted twice: inside a
  ``planned`` block further plans are ignored.
- *network-epochs* of evaluations: the evaluation training loops call :func:`epochs_done`
  after every epoch; inside :func:`counting_epochs` (the evaluation display,
  ``mim4dd_kit/run/progress.py``) that advances the evaluation's bar or log lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Protocol


class Sink(Protocol):
    def plan(self, steps: int, label: str) -> None: ...

    def advance(self, steps: int) -> None: ...


_state: dict = {"sink": None, "depth": 0}


@contextlib.contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """Send plans and steps to ``sink`` inside the block (None: report nothing)."""
    saved = dict(_state)
    _state.update(sink=sink, depth=0)
    try:
        yield
    finally:
        _state.update(saved)


@contextlib.contextmanager
def planned(steps: int, label: str) -> Iterator[None]:
    """Announce ``steps`` more steps of work called ``label``; plans inside are ignored."""
    sink = _state["sink"]
    if sink is not None and _state["depth"] == 0:
        sink.plan(int(steps), label)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def advance(steps: int = 1) -> None:
    """Count ``steps`` finished optimiser steps."""
    sink = _state["sink"]
    if sink is not None:
        sink.advance(steps)


def batches(n: int, batch_size: int) -> int:
    """Optimiser steps of one epoch over ``n`` samples in batches of ``batch_size``."""
    return -(-n // max(batch_size, 1)) if n else 0


_epochs: ContextVar[Callable[[int], None] | None] = ContextVar("mdk_epochs", default=None)


def epochs_done(networks: int = 1) -> None:
    """Report one finished epoch of ``networks`` networks to the running evaluation."""
    advance_epochs = _epochs.get()
    if advance_epochs is not None:
        advance_epochs(networks)


def current_epochs_callback() -> Callable[[int], None] | None:
    """The callback :func:`epochs_done` reaches in this context (None: none)."""
    return _epochs.get()


@contextlib.contextmanager
def counting_epochs(advance_epochs: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, :func:`epochs_done` calls ``advance_epochs(networks)``."""
    token = _epochs.set(advance_epochs)
    try:
        yield
    finally:
        _epochs.reset(token)
