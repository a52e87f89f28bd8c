"""Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023).

Every iteration samples a fresh randomly initialised backbone and matches, per class,
the mean embedding of a real batch and of the class's synthetic images:
``L_DD = sum_c || mean f(A(x_real^c)) - mean f(A(x_syn^c)) ||^2`` with a siamese
augmentation A shared by the two sides of a class. All classes go through the network
together (the reference code's own formulation for BatchNorm networks); the real side,
which needs no gradient, runs without autograd in cache-sized chunks
(``mim4dd_kit/chunked.py``). With per-sample normalisation this equals the reference's
per-class loop up to float rounding (``benchmarks/bench_iteration.py`` checks it).

In a multi-process run (``ctx.shard``, docs/distributed.md) every rank forwards only its
slice of each class's real rows; the per-class real feature sums and counts are summed
over ranks, so every rank holds the full-batch class means, and the (replicated)
synthetic side makes the loss enter each rank's partial loss divided by the world size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from .. import chunked
from ..contracts import LossOutput, Params, RunContext, Shard, SyntheticState
from ..runtime import isolated_rng
from .feature_taps import for_regularizer


def class_sums(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums (C, D) and row counts (C,) of the rows of ``x`` (N, D)."""
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, labels, x)
    return sums, torch.bincount(labels, minlength=num_classes)


def class_means(x: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class means of the rows of ``x`` (N, D) -> (C, D), in one scatter-add."""
    sums, counts = class_sums(x, labels, num_classes)
    return sums / counts.clamp(min=1)[:, None].to(x.dtype)


def sharded_class_means(x: Tensor, labels: Tensor, num_classes: int, shard: Shard) -> Tensor:
    """Class means over the rows of ``x`` on *every* rank: sums and counts summed over
    ranks in one collective (no gradient flows through it; use it on the real side)."""
    if not shard.active:
        return class_means(x, labels, num_classes)
    return means_over_ranks(*class_sums(x.detach(), labels, num_classes), shard)


def means_over_ranks(sums: Tensor, counts: Tensor, shard: Shard) -> Tensor:
    """Class means from per-rank class sums (C, D) and counts (C,), summed over ranks."""
    if shard.active:
        both = shard.sum(torch.cat([sums, counts[:, None].to(sums.dtype)], dim=1))
        sums, counts = both[:, :-1], both[:, -1]
    return sums / counts.clamp(min=1)[:, None].to(sums.dtype)


class DistributionMatching:
    """Distribution matching: per-class mean embeddings under random networks (DM)."""

    learns_lr: ClassVar[bool] = False
    #: the real batch may be split over ranks (docs/distributed.md)
    shardable: ClassVar[bool] = True

    class Params(Params):
        layer: int = Field(
            -1,
            description="block whose flattened output is the embedding; -1 is the last "
            "block, the features before the classifier as in the DM paper",
        )

    def __init__(self, params: DistributionMatching.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx
        if ctx.shard.active:
            # batch statistics over a shard are not those of the full real batch
            with isolated_rng(ctx.seed):
                probe = ctx.make_backbone()
            if chunked.couples_samples(probe.train()):
                raise ValueError(
                    "dm runs its random networks in train mode, where BatchNorm normalises "
                    "over the whole real batch, so the batch cannot be split over "
                    f"{ctx.shard.world_size} processes exactly; use a per-sample norm "
                    "(e.g. backbone norm: instance) or a single process"
                )

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx = self.ctx
        net = ctx.make_backbone().to(ctx.device)
        net.train()
        net.requires_grad_(False)
        c = ctx.data.info.num_classes
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        if ctx.shard.active:  # every rank drew the same batch; keep this rank's rows
            keep = ctx.shard.rows(real_y, c)
            real, real_y = real[keep], real_y[keep]
        syn_x, syn_y = syn.images, syn.labels
        if ctx.augment is not None:
            real, syn_x = ctx.augment.siamese(real, real_y, syn_x, syn_y)
        layer = self.params.layer
        # the real side needs no graph: chunked, cache-sized passes (mim4dd_kit/chunked.py)
        if want_features:
            real_feats = chunked.features(net, real, budget=ctx.chunk_bytes)
            sums, counts = class_sums(real_feats[layer].flatten(1), real_y, c)
        else:
            real_feats = None
            sums = chunked.class_sums(net, real, real_y, c, layer, budget=ctx.chunk_bytes)
            counts = torch.bincount(real_y, minlength=c)
        mean_real = means_over_ranks(sums, counts, ctx.shard)
        syn_feats = net.features(syn_x)
        mean_syn = class_means(syn_feats[layer].flatten(1), syn_y, c)
        loss = ((mean_real - mean_syn) ** 2).sum()
        if ctx.shard.active:  # replicated on every rank: each carries 1/world of it
            loss = loss / ctx.shard.world_size
        if not want_features:
            return LossOutput(loss)
        syn_feats = for_regularizer(ctx.feature_tap, net, syn_x, syn_feats)
        real_feats = for_regularizer(ctx.feature_tap, net, real, real_feats, grad=False)
        return LossOutput(loss, syn_feats, syn_y, real_feats, real_y)

    def state_dict(self) -> dict[str, Any]:
        return {}  # a new network every iteration: nothing to carry over

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
