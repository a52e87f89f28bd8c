"""Real data as tensors: what a ``datasets`` plugin loads and every other plugin reads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DataError


@dataclass(frozen=True)
class DataInfo:
    """What components need to know about a data set without its pixels."""

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    #: False for data where a horizontal flip changes the class meaning (digits).
    flip_ok: bool = True


def class_table(labels: Tensor, num_classes: int) -> Tensor:
    """(C, W) indices of every class's samples in order (W the largest class), padded -1."""
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(width, device=labels.device)
    gather = (starts[:, None] + pos[None, :]).clamp(max=len(labels) - 1)
    return torch.where(pos[None, :] < counts[:, None], order[gather], -1)


@dataclass
class RealData:
    """A labelled image data set held as tensors, normalised, with per-class indices.

    Images are float32 ``(N, C, H, W)`` in the data set's normalised space; labels
    int64 ``(N,)`` in ``[0, num_classes)``.
    """

    info: DataInfo
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    #: identity recorded in provenance: name, split, size, sha256 of the raw content
    identity: dict[str, Any] = field(default_factory=dict)
    #: training images held out for choosing settings (:meth:`hold_out`); None without
    val_images: Tensor | None = None
    val_labels: Tensor | None = None
    _by_class: Tensor | None = field(default=None, repr=False)
    _counts: Tensor | None = field(default=None, repr=False)

    def to(self, device: torch.device | str) -> RealData:
        """Return a copy living on ``device`` (real data stays there for the whole run)."""
        return RealData(
            self.info,
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
            dict(self.identity),
            None if self.val_images is None else self.val_images.to(device),
            None if self.val_labels is None else self.val_labels.to(device),
        )

    def hold_out(self, per_class: int, seed: int) -> RealData:
        """Move ``per_class`` training images of every class into a validation split.

        Which images move depends only on ``seed`` and the training labels (a generator of
        its own, never the run's random stream), so every run with the same ``seed`` holds
        out the same images. The returned set's training split no longer contains them;
        its ``identity`` records the split (``validation``: per class, seed, size and a
        hash of the held-out indices).
        """
        if self.val_images is not None:
            raise DataError(f"data set {self.info.name!r} already holds out a validation split")
        counts = torch.bincount(self.train_labels.cpu(), minlength=self.info.num_classes)
        if int(counts.min()) <= per_class:
            c = int(counts.argmin())
            raise DataError(
                f"validation.per_class is {per_class} but class {c} of {self.info.name!r} "
                f"has only {int(counts[c])} training images (at least one must remain)"
            )
        table = class_table(self.train_labels.cpu(), self.info.num_classes)
        gen = torch.Generator().manual_seed(int(seed))
        keys = torch.rand(table.shape, generator=gen).masked_fill(table < 0, 2.0)
        pick = keys.topk(per_class, dim=1, largest=False).indices
        held = table.gather(1, pick).reshape(-1).sort().values  # class-major, then index
        keep = torch.ones(len(self.train_labels), dtype=torch.bool)
        keep[held] = False
        dev = self.train_labels.device
        held_d, keep_d = held.to(dev), keep.to(dev)
        digest = hashlib.sha256(held.numpy().astype("<i8").tobytes()).hexdigest()
        identity = {**self.identity, "size": int(keep.sum()),
                    "validation": {"per_class": int(per_class), "seed": int(seed),
                                   "size": int(len(held)), "indices_sha256": digest}}
        return RealData(
            self.info, self.train_images[keep_d], self.train_labels[keep_d],
            self.test_images, self.test_labels, identity,
            self.train_images[held_d], self.train_labels[held_d],
        )

    def eval_split(self, split: str) -> tuple[Tensor, Tensor]:
        """Images and labels an evaluator scores on: ``test`` or ``validation``."""
        if split == "test":
            return self.test_images, self.test_labels
        if split == "validation":
            if self.val_images is None or self.val_labels is None:
                raise DataError(
                    f"split 'validation' was asked for but data set {self.info.name!r} holds "
                    "no validation split; add `validation: {per_class: N, seed: S}` to the "
                    "recipe that distills the set (docs/recipes.md)"
                )
            return self.val_images, self.val_labels
        raise ValueError(f"unknown split {split!r} (test or validation)")

    def _index(self) -> tuple[Tensor, Tensor]:
        if self._by_class is None:
            self._by_class = class_table(self.train_labels, self.info.num_classes)
            self._counts = torch.bincount(self.train_labels, minlength=self.info.num_classes)
        return self._by_class, self._counts  # type: ignore[return-value]

    def class_counts(self) -> Tensor:
        return self._index()[1]

    def sample_per_class(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` distinct training images of every class in one vectorised step.

        Returns images ``(C * n, ...)`` grouped by class (class 0 first) and their labels.
        ``n`` is capped at the smallest class size.
        """
        table, counts = self._index()
        n = min(n, int(counts.min()))
        if n <= 0:
            raise ValueError("a class of the training set has no images")
        # random keys, padding pushed to the end, then the n smallest keys per class
        keys = torch.rand(table.shape, generator=generator, device=table.device)
        keys = keys.masked_fill(table < 0, 2.0)
        pick = keys.topk(n, dim=1, largest=False).indices
        idx = table.gather(1, pick).reshape(-1)
        return self.train_images[idx], self.train_labels[idx]
