"""Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023).

Every iteration samples a fresh randomly initialised backbone and matches, per class,
the mean embedding of a real batch and of the class's synthetic images:
``L_DD = sum_c || mean f(A(x_real^c)) - mean f(A(x_syn^c)) ||^2`` with a siamese
augmentation A shared by the two sides of a class. All classes go through the network
together (the reference code's own formulation for BatchNorm networks); the real side,
which needs no gradient, runs without autograd in cache-sized chunks
(``mim4dd_kit/training/chunked.py``). With per-sample normalisation this equals the reference's
per-class loop up to float rounding (``benchmarks/bench_iteration.py`` checks it).

In a multi-process run (``ctx.shard``, docs/distributed.md) every rank forwards only its
slice of each class's real rows; the per-class real feature sums and counts are summed
over ranks, so every rank holds the full-batch class means, and the (replicated)
synthetic side makes the loss enter each rank's partial loss divided by the world size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..api import DDLoss, LossOutput, RunContext, SyntheticState, for_regularizer
from ..core.runtime import isolated_rng
from ..training.networks import couples_samples
from ..training.stats import class_means, class_sums, means_over_ranks
from .params import DMParams


class DistributionMatching(DDLoss):
    """Distribution matching: per-class mean embeddings under random networks (DM)."""

    learns_lr: ClassVar[bool] = False
    #: the real batch may be split over ranks (docs/distributed.md)
    shardable: ClassVar[bool] = True

    Params = DMParams

    def __init__(self, params: DistributionMatching.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx
        if ctx.shard.active:
            # batch statistics over a shard are not those of the full real batch
            with isolated_rng(ctx.seed):
                probe = ctx.make_backbone()
            if couples_samples(probe.train()):
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
        # the real side needs no graph: cache-sized passes on a CPU (ctx.nograd_*)
        if want_features:
            # the regularizer's reduction of each chunk's features (if it reads one) and
            # this loss's flattened block: the whole batch's features are never kept
            view = ctx.real_view
            if view is None:
                real_feats = ctx.nograd_features(net, real)
                own = real_feats[layer].flatten(1)
            else:
                own, *real_feats = ctx.nograd_features(
                    net, real, view=lambda fs: [fs[layer].flatten(1), *view(fs)])
            sums, counts = class_sums(own, real_y, c)
        else:
            real_feats = None
            sums = ctx.nograd_class_sums(net, real, real_y, c, layer)
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
