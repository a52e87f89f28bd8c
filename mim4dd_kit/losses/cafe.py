"""CAFE (Wang et al., "CAFE: Learning to Condense Dataset by Aligning Features", CVPR 2022).

One network (trained on the synthetic set between outer steps, as in DC) sees a real
batch and the synthetic set, each in a single forward over all classes. The loss is

    L_DD = sum_k w_k sum_c || mean f^k(A(x_real^c)) - mean f^k(A(x_syn^c)) ||^2      (alignment)
         + disc_weight * sum_j CE( z_j / T, y_real^j ),  z_jc = <f^K(x_real^j), mean f^K(x_syn^c)>

(the discrimination loss: real samples are classified by their similarity to each class's
mean synthetic embedding). Sums (not means) over classes and real samples follow the
reference ``distill.py`` (``MSELoss(reduction='sum')``, ``CrossEntropyLoss(reduction='sum')``).

Network schedule (DC's outer/inner loops, in place of the reference's accuracy-watcher
loops): call n re-initialises the network when ``n % outer_loop == 0``; every other call
first trains it ``inner_loop`` SGD steps on the detached synthetic set (the schedule is
``gradient_matching.PersistentNetwork``, shared with ``dc``, whose inner loop counts epochs
instead). The network, its optimizer and the call counter are in ``state_dict`` for exact
resume.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..contracts import Backbone, LossOutput, Params, RunContext, SyntheticState
from .dm import class_means
from .feature_taps import for_regularizer
from .gradient_matching import PersistentNetwork, sgd_steps


def alignment_loss(
    real_feats: list[Tensor],
    real_y: Tensor,
    syn_feats: list[Tensor],
    syn_y: Tensor,
    num_classes: int,
    weights: list[float] | None = None,
) -> Tensor:
    """Σ_k w_k Σ_c ||mean real f^k − mean syn f^k||² over blocks; features (B, ...) each."""
    weights = weights if weights is not None else [1.0] * len(real_feats)
    total = real_feats[0].new_zeros(())
    for w, fr, fs in zip(weights, real_feats, syn_feats, strict=True):
        mr = class_means(fr.flatten(1), real_y, num_classes)
        ms = class_means(fs.flatten(1), syn_y, num_classes)
        total = total + w * ((mr - ms) ** 2).sum()
    return total


def discrimination_loss(
    real_last: Tensor, real_y: Tensor, syn_last: Tensor, syn_y: Tensor, num_classes: int,
    temperature: float = 1.0,
) -> Tensor:
    """Summed CE of real samples (N, D) classified by <f_real, class mean of syn (C, D)> / T."""
    centres = class_means(syn_last.flatten(1), syn_y, num_classes)
    logits = real_last.flatten(1) @ centres.t() / temperature
    return F.cross_entropy(logits, real_y, reduction="sum")


class CAFE:
    """Layer-wise feature alignment plus discrimination loss (CAFE)."""

    learns_lr: ClassVar[bool] = False

    class Params(Params):
        layer_weights: list[float] | None = Field(
            None, description="weight of every block's alignment term (K values); None: "
            "all 1 (reference distill.py: 1, 1, 0.1, 0.1 over its 4 taps)"
        )
        disc_weight: float = Field(
            0.01, ge=0, description="weight of the discrimination loss (reference inner_weight)"
        )
        temperature: float = Field(1.0, gt=0, description="divides the similarity logits")
        outer_loop: int = Field(
            10, ge=1, description="calls between network re-initialisations (DC get_loops)"
        )
        inner_loop: int = Field(
            50, ge=0, description="network SGD steps on the synthetic set before a call"
        )
        net_lr: float = Field(0.01, gt=0, description="network SGD lr (reference lr_net)")
        net_momentum: float = Field(0.0, ge=0, lt=1, description="network SGD momentum")
        batch_train: int | None = Field(
            256, ge=1, description="synthetic images per network step; None: all"
        )

    def __init__(self, params: CAFE.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx
        self.schedule = PersistentNetwork(ctx, outer_loop=params.outer_loop, lr=params.net_lr,
                                          momentum=params.net_momentum)

    @property
    def net(self) -> Backbone | None:
        return self.schedule.net

    def _train_net(self, net: Backbone, opt: torch.optim.Optimizer, syn: SyntheticState) -> None:
        """``inner_loop`` SGD steps on detached synthetic images (augmented per sample)."""
        sgd_steps(net, opt, syn.images.detach(), syn.labels, steps=self.params.inner_loop,
                  batch=self.params.batch_train, augment=self.ctx.augment)

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx, p = self.ctx, self.params
        net = self.schedule.advance(lambda n, o: self._train_net(n, o, syn))
        c = ctx.data.info.num_classes
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        syn_x, syn_y = syn.images, syn.labels
        if ctx.augment is not None:
            real, syn_x = ctx.augment.siamese(real, real_y, syn_x, syn_y)
        with torch.no_grad():
            real_feats = net.features(real)
        syn_feats = net.features(syn_x)
        if p.layer_weights is not None and len(p.layer_weights) != len(syn_feats):
            raise ValueError(f"cafe layer_weights has {len(p.layer_weights)} values but the "
                             f"backbone has {len(syn_feats)} blocks")
        align = alignment_loss(real_feats, real_y, syn_feats, syn_y, c, p.layer_weights)
        disc = discrimination_loss(real_feats[-1], real_y, syn_feats[-1], syn_y, c,
                                   p.temperature)
        loss = align + p.disc_weight * disc
        logs = {"cafe_align": float(align.detach()), "cafe_disc": float(disc.detach())}
        if not want_features:
            return LossOutput(loss, logs=logs)
        syn_feats = for_regularizer(ctx.feature_tap, net, syn_x, syn_feats)
        real_feats = for_regularizer(ctx.feature_tap, net, real, real_feats, grad=False)
        return LossOutput(loss, syn_feats, syn_y, real_feats, real_y, logs)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)
