"""What a DD loss receives: the run context, the learnable set, its shard of the batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .data import RealData

if TYPE_CHECKING:
    from .plugins import Augmentation


@dataclass(frozen=True)
class Shard:
    """This process's part of a multi-process run: rank ``rank`` of ``world_size``.

    In a sharded run every rank draws the same full real batch (same seed, same random
    stream) and keeps only its slice of each class's rows (:meth:`rows`); a DD loss then
    returns a *partial* loss whose sum over ranks is the single-process loss, and the
    engine sums gradients over ranks. ``world_size == 1`` (the default) is an ordinary
    run: :meth:`rows` keeps everything and :meth:`sum` is the identity.
    See ``docs/distributed.md``.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, labels: Tensor, num_classes: int) -> Tensor:
        """Indices (in order) of the rows of a batch with ``labels`` (N,) this rank keeps.

        Each class's rows, in batch order, are split as ``torch.tensor_split`` splits them
        into ``world_size`` parts (uneven splits allowed: the first ``n % world_size``
        ranks get one more row; a rank may get none); rank r keeps part r of every class.
        """
        n = labels.shape[0]
        if not self.active:
            return torch.arange(n, device=labels.device)
        counts = torch.bincount(labels, minlength=num_classes)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty_like(order)
        pos[order] = torch.arange(n, device=labels.device) - starts[labels[order]]
        base, extra = counts // self.world_size, counts % self.world_size
        lo = self.rank * base + extra.clamp(max=self.rank)
        hi = lo + base + (extra > self.rank).to(base.dtype)
        keep = (pos >= lo[labels]) & (pos < hi[labels])
        return keep.nonzero().squeeze(1)

    def sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over ranks in place (``all_reduce`` SUM) and return it."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


class NoGradPasses(Protocol):
    """Gradient-free forward passes over large batches (implemented by
    ``mim4dd_kit/training/chunked.py``, handed to plugins through :class:`RunContext`)."""

    def features(self, net: nn.Module, x: Tensor, budget: int,
                 view: Callable[[list[Tensor]], list[Tensor]] | None = None,
                 ) -> list[Tensor]: ...

    def class_sums(self, net: nn.Module, x: Tensor, labels: Tensor, num_classes: int,
                   layer: int, budget: int) -> Tensor: ...

    def logits(self, net: nn.Module, x: Tensor, budget: int) -> Tensor: ...


@dataclass
class RunContext:
    """Everything a DD loss may use; built once per run by the engine."""

    data: RealData
    ipc: int
    batch_real: int
    device: torch.device
    make_backbone: Callable[[], Backbone]
    augment: Augmentation | None
    seed: int
    #: the recipe's backbone as ``{"name": ..., **params}`` (keys for cached artefacts)
    backbone_spec: dict[str, Any] = field(default_factory=dict)
    #: where losses may cache artefacts shared across runs (e.g. expert trajectories)
    cache_dir: Path = field(default_factory=lambda: Path("~/.cache/mim4dd_kit").expanduser())
    #: the recipe's dataset as ``{"name": ..., **params}`` (keys for cached artefacts)
    dataset_spec: dict[str, Any] = field(default_factory=dict)
    #: this process's part of a multi-process run (``Shard()``: the whole batch)
    shard: Shard = field(default_factory=Shard)
    #: activation bytes per chunk of gradient-free real-data passes on a CPU
    #: (``mim4dd_kit/training/chunked.py``; 0 = whole batches); losses use
    #: :meth:`nograd_features` / :meth:`nograd_class_sums`, which apply it
    chunk_bytes: int = 8 * 2**20
    #: multi-formation factor of the stored set (``synthetic.formation``); ``compute``
    #: receives the decoded set (mim4dd_kit/io/formation.py)
    formation: int = 1
    #: where the regularizer's features are taken in each block (``Backbone.features``'s
    #: ``tap``; set by the engine from the regularizer's ``tap`` parameter)
    feature_tap: str = "output"
    #: whether the synthetic side's features keep the graph of the network's own training
    #: on the synthetic set (MTT's student, BPTT's unrolled model): False hands them from
    #: the trained weights taken as given, so the regularizer's gradient reaches the
    #: images through one forward pass instead of the whole unroll (set by the engine
    #: from ``Regularizer.network_gradient``)
    feature_network_gradient: bool = True
    #: how the regularizer reads the real side's block outputs: a row-wise reduction
    #: (``Regularizer.real_view``, e.g. per-channel means) a loss may take chunk by chunk
    #: with ``nograd_features(..., view=...)``; None: whole features (always None when
    #: ``feature_tap`` is not ``"output"``; set by the engine)
    real_view: Callable[[list[Tensor]], list[Tensor]] | None = field(default=None,
                                                                     repr=False)
    #: how the gradient-free passes run (set by the toolkit to its chunked passes,
    #: ``mim4dd_kit/training/chunked.py``; None: plain whole-batch passes)
    passes: NoGradPasses | None = field(default=None, repr=False)

    def nograd_features(self, net: nn.Module, x: Tensor,
                        view: Callable[[list[Tensor]], list[Tensor]] | None = None,
                        ) -> list[Tensor]:
        """``net.features(x)`` without autograd (real-side features), as fast as the
        device allows; equal to the plain pass up to float rounding. With ``view`` (a
        row-wise reduction), ``view(net.features(x))``, taken chunk by chunk so the
        whole batch's features are never kept."""
        if self.passes is not None:
            if view is None:  # a NoGradPasses written before views keeps working
                return self.passes.features(net, x, self.chunk_bytes)
            return self.passes.features(net, x, self.chunk_bytes, view=view)
        with torch.no_grad():
            feats = net.features(x)
            return feats if view is None else view(feats)

    def nograd_class_sums(self, net: nn.Module, x: Tensor, labels: Tensor, num_classes: int,
                          layer: int = -1) -> Tensor:
        """Per-class sums ``(C, D)`` of block ``layer``'s flattened features of ``x``,
        without autograd and without keeping the whole batch's features."""
        if self.passes is not None:
            return self.passes.class_sums(net, x, labels, num_classes, layer, self.chunk_bytes)
        with torch.no_grad():
            f = net.features(x)[layer].flatten(1)
            return f.new_zeros(num_classes, f.shape[1]).index_add_(0, labels, f)

    def nograd_logits(self, net: nn.Module, x: Tensor) -> Tensor:
        """``net(x)`` without autograd, as fast as the device allows."""
        if self.passes is not None:
            return self.passes.logits(net, x, self.chunk_bytes)
        with torch.no_grad():
            return net(x)


@dataclass
class SyntheticState:
    """The learnable synthetic set during a run."""

    images: Tensor  # (M, C, H, W), requires grad
    labels: Tensor  # (M,)
    lr: Tensor | None = None  # learnable scalar, where the method learns one
