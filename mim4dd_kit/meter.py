"""Counting the training steps of long analyses, for a progress bar with an ETA.

Work is counted in *steps*: one optimiser step of one network (a stacked step of N
networks counts N). An analysis announces how many steps it will take with
:func:`planned` before it starts; the training loops call :func:`advance` after every
step. A sink installed with :func:`reporting` (the command line's progress bar) receives
both; without one every call here returns at once, so library use pays nothing.

Nested plans are not counted twice: inside a ``planned`` block further plans are ignored,
so ``cross_arch`` plans all its backbones' steps and the ``train_from_scratch`` runs it
makes inside count against that plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
