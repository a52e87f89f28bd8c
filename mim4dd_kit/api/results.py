"""Typed outputs of plugins: a DD loss's :class:`LossOutput` and :class:`ExpertBuffers`,
an evaluator's request and :class:`EvalResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data import RealData
from .params import AugmentationRef, BackboneRef


@dataclass
class LossOutput:
    """What a DD loss hands to the engine for one iteration.

    ``loss`` is the scalar L_DD. When the engine asked for features, ``syn_feats`` and
    ``real_feats`` hold one tensor per backbone block (``(M, ...)`` and ``(N, ...)``),
    computed by the networks the loss's method prescribes (docs/plugins.md); synthetic
    features carry gradient to the images, real ones need not.
    """

    loss: Tensor
    syn_feats: list[Tensor] | None = None
    syn_labels: Tensor | None = None
    real_feats: list[Tensor] | None = None
    real_labels: Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpertBuffers:
    """Where a DD loss's expert trajectories are (:meth:`DDLoss.build_expert_buffers`, the
    library side of ``mdk buffer``)."""

    #: the folder holding the experts
    path: Path
    #: experts the loss's parameters ask for (all present once built)
    experts: int
    #: how many of them this call trained (0: every one was already there)
    trained: int
    #: epochs each expert is recorded for
    epochs: int


@dataclass
class EvalRequest:
    """A synthetic set handed to an evaluator, with what it needs to train on it."""

    images: Tensor
    labels: Tensor
    lr: float | None
    data: RealData
    device: torch.device
    seed: int
    #: the backbone the set was distilled with (``name`` plus parameters), if known
    backbone: BackboneRef | None
    #: the augmentation the run used, if known
    augmentation: AugmentationRef | None


class EvalResult(dict):
    """What an evaluator returns: a JSON-serialisable record (a ``dict``: the evaluation
    record stored with the set, unchanged) that also knows its headline number and carries
    the tables and figures it produced.

    The headline is the record's first ``headline`` key (an evaluator lists the keys of its
    headline numbers under ``headline``), else ``accuracy_mean``; ``compare``, ``report``,
    ``sweep`` and the command line show it for any evaluator. ``tables`` maps a title to a
    Markdown table, ``figures`` a title to a file path; they travel with the object and are
    not stored.
    """

    def __init__(self, values: dict[str, Any] | None = None, *,
                 tables: dict[str, str] | None = None,
                 figures: dict[str, str] | None = None):
        super().__init__(values or {})
        self.tables = dict(tables or {})
        self.figures = dict(figures or {})

    @property
    def headline(self) -> str | None:
        """The key of the headline number, or None when the record has none."""
        declared = self.get("headline")
        if isinstance(declared, list):
            for key in declared:
                if isinstance(key, str) and _number(self.get(key)) is not None:
                    return key
        return "accuracy_mean" if _number(self.get("accuracy_mean")) is not None else None

    @property
    def headline_value(self) -> float | None:
        """The headline number, or None."""
        key = self.headline
        return None if key is None else _number(self[key])

    @classmethod
    def of(cls, value: Any) -> EvalResult:
        """``value`` as an :class:`EvalResult` (a plain dict from an older evaluator, or
        a record read back from a file)."""
        if isinstance(value, EvalResult):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"an evaluator must return a dict or EvalResult, not "
                            f"{type(value).__name__}")
        return cls(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
