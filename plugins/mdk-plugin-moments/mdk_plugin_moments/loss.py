"""Moment matching: distribution matching on the first two moments of the embedding.

Every iteration samples a fresh randomly initialised backbone (as distribution matching,
Zhao & Bilen, WACV 2023) and matches, per class c, the mean *and* the per-dimension
variance of the flattened last-block features of a real batch and of the class's
synthetic images, both under one siamese augmentation draw:

    L_DD = sum_c ||mu_real^c - mu_syn^c||^2 + var_weight * sum_c ||var_real^c - var_syn^c||^2

(population variances over each class's samples). With ``var_weight = 0`` this is DM's
loss. The real side needs no gradient and goes through ``ctx.nograd_features`` (chunked
on a CPU); only the synthetic side keeps a graph to the images.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mim4dd_kit.api import (
    DDLoss,
    LossOutput,
    Params,
    RunContext,
    SyntheticState,
    for_regularizer,
)


def class_moments(x: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class means and population variances (C, D) of the rows of ``x`` (N, D)."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1)[:, None].to(x.dtype)
    sums = x.new_zeros(num_classes, x.shape[1]).index_add(0, labels, x)
    squares = x.new_zeros(num_classes, x.shape[1]).index_add(0, labels, x * x)
    mean = sums / counts
    return mean, (squares / counts - mean * mean).clamp(min=0)


class MomentMatching(DDLoss):
    """Per-class mean and variance matching of embeddings under random networks."""

    class Params(Params):
        var_weight: float = Field(
            1.0, ge=0, description="weight of the variance term; 0 gives distribution "
            "matching's mean-only loss"
        )

    def __init__(self, params: MomentMatching.Params, *, ctx: RunContext):
        super().__init__(params, ctx=ctx)

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx, c = self.ctx, self.ctx.data.info.num_classes
        net = ctx.make_backbone().to(ctx.device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        syn_x = syn.images
        if ctx.augment is not None:
            real, syn_x = ctx.augment.siamese(real, real_y, syn_x, syn.labels)
        real_feats = ctx.nograd_features(net, real)
        syn_feats = net.features(syn_x)
        mean_r, var_r = class_moments(real_feats[-1].flatten(1), real_y, c)
        mean_s, var_s = class_moments(syn_feats[-1].flatten(1), syn.labels, c)
        mean_term = ((mean_r - mean_s) ** 2).sum()
        var_term = ((var_r - var_s) ** 2).sum()
        loss = mean_term + self.params.var_weight * var_term
        logs = {"mean_term": float(mean_term.detach()), "var_term": float(var_term.detach())}
        if not want_features:
            return LossOutput(loss, logs=logs)
        # the regularizer's features at its tap: these outputs, or one more pass at the tap
        real_feats = for_regularizer(ctx.feature_tap, net, real, real_feats, grad=False)
        syn_feats = for_regularizer(ctx.feature_tap, net, syn_x, syn_feats)
        return LossOutput(loss, syn_feats, syn.labels, real_feats, real_y, logs)

    def state_dict(self) -> dict[str, Any]:
        return {}  # a fresh network every call; its randomness is the run's stream
