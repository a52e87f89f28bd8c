"""Class statistics of feature rows: per-class sums, counts and means, in one scatter-add,
and class means over the ranks of a sharded run."""

from __future__ import annotations

import torch
from torch import Tensor

from ..api import Shard


def class_sums(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums (C, D) and row counts (C,) of the rows of ``x`` (N, D)."""
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, labels, x)
    return sums, torch.bincount(labels, minlength=num_classes)


def class_means(x: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class means of the rows of ``x`` (N, D) -> (C, D), in one scatter-add."""
    sums, counts = class_sums(x, labels, num_classes)
    return sums / counts.clamp(min=1)[:, None].to(x.dtype)


def means_over_ranks(sums: Tensor, counts: Tensor, shard: Shard) -> Tensor:
    """Class means from per-rank class sums (C, D) and counts (C,), summed over ranks."""
    if shard.active:
        both = shard.sum(torch.cat([sums, counts[:, None].to(sums.dtype)], dim=1))
        sums, counts = both[:, :-1], both[:, -1]
    return sums / counts.clamp(min=1)[:, None].to(sums.dtype)
