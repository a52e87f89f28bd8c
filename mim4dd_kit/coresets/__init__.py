"""Coreset baselines (``mdk.coresets``): real training images chosen per class.

The field compares distilled sets with real subsets of the same size (the DC paper,
Zhao et al., ICLR 2021, Table 1: Random, Herding, K-Center, Forgetting). The built-in
methods are ``random`` (:mod:`.random`), ``herding`` (:mod:`.herding`) and ``k_center``
(:mod:`.k_center`); :func:`mim4dd_kit.run.baseline.make_baseline` (``mdk baseline``) writes a
method's choice as a synthetic-set file. A method is a class with a nested Pydantic ``Params`` and
``select(features (N, D), labels (N,), ipc, generator) -> indices (C * ipc,)``.
"""

from .herding import Herding
from .k_center import KCenter
from .random import RandomSubset

__all__ = ["Herding", "KCenter", "RandomSubset"]
