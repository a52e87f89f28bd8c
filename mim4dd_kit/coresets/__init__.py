"""Coreset baselines (``mdk.coresets``): real training images chosen per class.

The field compares distilled sets with real subsets of the same size (the DC paper,
Zhao et al., ICLR 2021, Table 1: Random, Herding, K-Center, Forgetting). The built-in
methods are ``random`` (:mod:`.random`), ``herding`` (:mod:`.herding`) and ``k_center``
(:mod:`.k_center`); :func:`mim4dd_kit.run.baseline.make_baseline` (``mdk baseline``) writes a
method's choice as a synthetic-set file. A method is a class with a nested Pydantic ``Params`` and
``select(features (N, D), labels (N,), ipc, generator) -> indices (C * ipc,)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .herding import Herding
    from .k_center import KCenter
    from .random import RandomSubset

__all__ = ["Herding", "KCenter", "RandomSubset"]
#: resolved on first use (PEP 562), so that the torch-free parameters models in
#: :mod:`.params` import without the methods
_WHERE = {"Herding": ".herding", "KCenter": ".k_center", "RandomSubset": ".random"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
