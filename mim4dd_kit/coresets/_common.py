"""Per-class selection shared by the coreset baselines.

A coreset method picks ``ipc`` training samples of every class from their features. The
classes are processed in blocks: the features of a block of classes are gathered into one
padded tensor (classes, W, D), W the largest class, with a validity mask, so a method is
written once, vectorised over the samples and the classes of the block, with a Python loop
over its ``ipc`` greedy steps only. Blocks bound the memory of that tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from ..api import class_table
from ..core.errors import DataError

#: elements of one gathered (classes, W, D) block (2**27 float32 = 512 MiB)
BLOCK_ELEMENTS = 2**27


class PerClassSelector(ABC):
    """Base of the coreset methods: ``select`` splits the work by class.

    Subclasses implement :meth:`select_block` and set ``name``; ``needs_features`` tells
    :func:`~mim4dd_kit.run.baseline.make_baseline` whether to compute a feature space.
    """

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = True

    def select(self, features: Tensor, labels: Tensor, ipc: int,
               generator: torch.Generator | None = None) -> Tensor:
        """Indices (C * ipc,) into the training set: class 0's ``ipc`` picks first.

        ``features`` (N, D) and ``labels`` (N,) describe the training set; the classes are
        0..max(labels). Within a class the indices are in the order the method picked them.
        """
        if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                f"features must be (N, D) and labels (N,), got {tuple(features.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if ipc < 1:
            raise DataError(f"coreset {self.name!r}: ipc must be at least 1, got {ipc}")
        labels = labels.to(features.device).long()
        num_classes = int(labels.max()) + 1
        table = class_table(labels, num_classes)  # (C, W), padded with -1
        counts = (table >= 0).sum(1)
        short = torch.nonzero(counts < ipc).flatten()
        if len(short):
            c = int(short[0])
            raise DataError(
                f"coreset {self.name!r}: ipc is {ipc} but class {c} has only "
                f"{int(counts[c])} training images"
            )
        if features.dtype not in (torch.float32, torch.float64):
            features = features.float()
        width, dim = table.shape[1], max(int(features.shape[1]), 1)
        per_block = max(1, BLOCK_ELEMENTS // (width * dim))
        picks = []
        for start in range(0, num_classes, per_block):
            idx = table[start:start + per_block]  # (c, W)
            valid = idx >= 0
            feats = features[idx.clamp(min=0)]  # (c, W, D)
            pos = self.select_block(feats, valid, ipc, generator)  # (c, ipc)
            picks.append(idx.gather(1, pos))
        return torch.cat(picks).reshape(-1)

    @abstractmethod
    def select_block(self, feats: Tensor, valid: Tensor, ipc: int,
                     generator: torch.Generator | None) -> Tensor:
        """Positions (c, ipc) into the W axis of ``feats`` (c, W, D); ``valid`` (c, W)."""


def masked_mean(feats: Tensor, valid: Tensor) -> Tensor:
    """Per-class mean feature (c, D) over the valid samples of (c, W, D)."""
    w = valid.to(feats.dtype)[..., None]
    return (feats * w).sum(1) / w.sum(1).clamp_min(1)


def random_keys(valid: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform keys (c, W) on ``valid``'s device from a CPU generator; padding gets 2."""
    keys = torch.rand(valid.shape, generator=generator).to(valid.device)
    return keys.masked_fill(~valid, 2.0)
