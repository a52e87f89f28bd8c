"""The contrastive MI bound of MIM4DD (Eqs. 2.14-2.16) on a matrix of critic scores: the
loss the regularizer minimises and the estimate the ``mi_estimate`` evaluator reports."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def log_h_pair(scores: Tensor, offset: Tensor | float) -> tuple[Tensor, Tensor]:
    """``log h`` and ``log(1 - h)`` for ``h = sigmoid(scores - offset)``, stably."""
    shifted = scores - offset
    return -F.softplus(-shifted), -F.softplus(shifted)


def nce_loss(
    scores: Tensor,
    positive: Tensor,
    num_classes: int,
    pair_counts: tuple[Tensor, Tensor] | None = None,
    offset: Tensor | float = 0.0,
) -> Tensor:
    """Eq. 2.16 for one layer, as a loss. ``scores`` and ``positive`` are (M, N).

    ``h = sigmoid(s - offset)``; ``offset`` is ``log B`` of the discriminator
    ``e^s / (e^s + B)`` (0 for the literal Eq. 2.15). ``log h = -softplus(offset - s)``
    and ``log(1 - h) = -softplus(s - offset)`` are the stable forms. A batch without
    positive (or negative) pairs contributes 0 for that term rather than NaN.
    ``pair_counts`` (positive, negative) replaces the counts of this matrix as the
    denominators: with the counts of the full matrix, the loss of a block of its columns
    is that block's share of the full loss (sharded runs).
    """
    pos = positive.to(scores.dtype)
    neg = 1.0 - pos
    log_h, log_1mh = log_h_pair(scores, offset)
    n_pos, n_neg = pair_counts if pair_counts is not None else (pos.sum(), neg.sum())
    mean_pos = (log_h * pos).sum() / n_pos.clamp(min=1.0)
    mean_neg = (log_1mh * neg).sum() / n_neg.clamp(min=1.0)
    return -(mean_pos + (num_classes - 1) * mean_neg)


def mi_lower_bound(
    scores: Tensor,
    positive: Tensor,
    num_classes: int,
    num_positive: Tensor | None = None,
    offset: Tensor | float = 0.0,
) -> Tensor:
    """Eq. 2.14: ``log(C - 1) + E_P[log h]``, the MI estimate the loss maximises (nats).

    ``num_positive`` replaces this matrix's positive count (see :func:`nce_loss`); the
    sum over column blocks of their bounds then has ``log(C - 1)`` once per block.
    ``offset`` selects the discriminator as in :func:`nce_loss`.
    """
    pos = positive.to(scores.dtype)
    n_pos = pos.sum() if num_positive is None else num_positive
    mean_pos = (log_h_pair(scores, offset)[0] * pos).sum() / n_pos.clamp(min=1.0)
    return math.log(max(num_classes - 1, 1)) + mean_pos
