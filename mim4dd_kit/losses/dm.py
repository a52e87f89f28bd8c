"""Distribution matching (Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023).

Every iteration samples a fresh randomly initialised backbone and matches, per class,
the mean embedding of a real batch and of the class's synthetic images:
``L_DD = sum_c || mean f(A(x_real^c)) - mean f(A(x_syn^c)) ||^2`` with a siamese
augmentation A shared by the two sides of a class. All classes go through the network
in one batched pass per side (the reference code's own formulation for BatchNorm
networks); with per-sample normalisation this equals the per-class loop exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from ..contracts import LossOutput, Params, RunContext, SyntheticState


def class_means(x: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class means of the rows of ``x`` (N, D) -> (C, D), in one scatter-add."""
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1)
    return sums / counts[:, None].to(x.dtype)


class DistributionMatching:
    """Distribution matching: per-class mean embeddings under random networks (DM)."""

    learns_lr: ClassVar[bool] = False

    class Params(Params):
        layer: int = Field(
            -1,
            description="block whose flattened output is the embedding; -1 is the last "
            "block, the features before the classifier as in the DM paper",
        )

    def __init__(self, params: DistributionMatching.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx = self.ctx
        net = ctx.make_backbone().to(ctx.device)
        net.train()
        net.requires_grad_(False)
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        syn_x, syn_y = syn.images, syn.labels
        if ctx.augment is not None:
            real, syn_x = ctx.augment.siamese(real, real_y, syn_x, syn_y)
        with torch.no_grad():
            real_feats = net.features(real)
        syn_feats = net.features(syn_x)
        c = ctx.data.info.num_classes
        mean_real = class_means(real_feats[self.params.layer].flatten(1), real_y, c)
        mean_syn = class_means(syn_feats[self.params.layer].flatten(1), syn_y, c)
        loss = ((mean_real - mean_syn) ** 2).sum()
        if not want_features:
            return LossOutput(loss)
        return LossOutput(loss, syn_feats, syn_y, real_feats, real_y)

    def state_dict(self) -> dict[str, Any]:
        return {}  # a new network every iteration: nothing to carry over

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
