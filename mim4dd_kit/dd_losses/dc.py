"""Dataset Condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021) and with
Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

Per class c, the gradients of the classification loss that one network gets from a real
batch and from the class's synthetic images are matched (DC paper Eq. 9-10):

    L_DD = sum_c D( grad_theta CE(theta; A(x_real^c)), grad_theta CE(theta; A(x_syn^c)) )

with D the layer-wise distance ``ours`` (see ``gradient_matching``). DC uses no
augmentation (A = identity); DSA draws one augmentation per class and applies it to the
class's real and synthetic images alike (siamese, DSA paper Eq. 5).

Network schedule (reference ``main.py``): an outer iteration makes ``outer_loop`` image
updates on one freshly initialised network and trains it ``inner_loop`` epochs on the
detached synthetic set between them (SGD lr 0.01, no momentum, batch 256; DSA augments
those epochs per sample). Here one ``compute`` call is one image update: call n builds a
new network when ``n % outer_loop == 0`` and otherwise first trains the current one.
For BatchNorm backbones, 16 real images per class set the BN statistics in train mode
before every matching and BN is then frozen (reference ``main.py``).

All classes are matched in one vectorised gradient call per side (on a CPU the real side
runs it in groups of classes whose activations stay within 16 MiB, ``class_chunk``: the
same values without a fresh zero-filled mapping for every activation); the features of
the same forward are handed to a regularizer (both sides from the one network).

In a multi-process run (``ctx.shard``, docs/distributed.md) every rank keeps its slice of
each class's matched real rows. A class's real gradient is the gradient of a mean CE, so
each rank's mean gradient times its row count is summed over ranks and divided by the
full count: every rank holds the full-batch gradient. The matching distance is then
replicated and enters each rank's partial loss divided by the world size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..api import (
    Backbone,
    DDLoss,
    LossOutput,
    RunContext,
    Shard,
    SyntheticState,
    for_regularizer,
)
from ..core.errors import RunError
from ..training.loop import sgd_epochs
from ..training.networks import PersistentNetwork
from .gradient_matching import (
    class_chunk,
    class_gradients,
    freeze_batchnorm,
    get_loops,
    has_batchnorm,
    match_distance,
)
from .params import DCParams, DSAParams

BN_PER_CLASS = 16  # real images per class that set BatchNorm statistics (reference BNSizePC)


def group_by_class(x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Sort a batch by label (stably) and reshape it to (C, n, ...); every class needs n."""
    order = torch.argsort(y, stable=True)
    x, y = x[order], y[order]
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError("gradient matching needs the same number of images in every class, "
                         f"got {counts.tolist()}")
    n = int(counts[0])
    return x.reshape(num_classes, n, *x.shape[1:]), y.reshape(num_classes, n)


def full_batch_gradients(
    grads: list[Tensor], local_n: int, total_n: int, shard: Shard
) -> list[Tensor]:
    """Per-class mean gradients over this rank's ``local_n`` rows of each class -> the
    means over all ``total_n`` rows, on every rank (one collective)."""
    flat = torch.cat([g.reshape(-1) for g in grads]) * local_n
    flat = shard.sum(flat) / total_n
    return [piece.view_as(g) for piece, g in zip(flat.split([g.numel() for g in grads]), grads,
                                                  strict=True)]


class DatasetCondensation(DDLoss):
    """Gradient matching with a network trained on the synthetic set in between (DC)."""

    learns_lr: ClassVar[bool] = False
    #: the matched real batch may be split over ranks (docs/distributed.md)
    shardable: ClassVar[bool] = True
    #: the recipe name, for error messages
    method: ClassVar[str] = "dc"

    Params = DCParams

    def __init__(self, params: DatasetCondensation.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx
        if params.augment and ctx.augment is None:
            raise ValueError(
                f"{self.method} with augment: true needs an augmentation; set the recipe key "
                "`augmentation` (e.g. `augmentation: {name: dsa}`)"
            )
        outer, inner = get_loops(ctx.ipc)
        self.outer_loop = params.outer_loop if params.outer_loop is not None else outer
        self.inner_loop = params.inner_loop if params.inner_loop is not None else inner
        self.schedule = PersistentNetwork(ctx, outer_loop=self.outer_loop, lr=params.net_lr,
                                          momentum=params.net_momentum)

    @property
    def net(self) -> Backbone | None:
        return self.schedule.net

    # -- hooks for subclasses -------------------------------------------------------------
    def real_batch(self, net: Backbone) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The real images to match, grouped by class (class 0 first), and logs."""
        x, y = self.ctx.data.sample_per_class(self.ctx.batch_real)
        return x, y, {}

    # -- the loss -------------------------------------------------------------------------
    def _train_net(self, net: Backbone, opt: torch.optim.Optimizer, syn: SyntheticState) -> None:
        augment = self.ctx.augment if self.params.augment else None
        sgd_epochs(net, opt, syn.images.detach(), syn.labels, epochs=self.inner_loop,
                   batch=self.params.batch_train, augment=augment)

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx, p = self.ctx, self.params
        c = ctx.data.info.num_classes
        net = self.schedule.advance(lambda n, o: self._train_net(n, o, syn))
        if has_batchnorm(net):
            freeze_batchnorm(net, ctx.data.sample_per_class(BN_PER_CLASS)[0])
        real, real_y, logs = self.real_batch(net)
        shard, per_class_n = ctx.shard, real_y.shape[0] // c
        if shard.active:  # every rank has the same batch; keep this rank's rows
            if per_class_n < shard.world_size:
                raise RunError(
                    f"{self.method} splits each class's real batch over "
                    f"{shard.world_size} processes and needs at least that many real images "
                    f"per class, but matches {per_class_n}; raise synthetic.batch_real (or "
                    "the clusters) or start fewer processes"
                )
            keep = shard.rows(real_y, c)
            real, real_y = real[keep], real_y[keep]
        syn_x, syn_y = syn.images, syn.labels
        if p.augment:
            assert ctx.augment is not None
            real, syn_x = ctx.augment.siamese(real, real_y, syn_x, syn_y)
        real_x, real_y = group_by_class(real, real_y, c)  # (C, n, ...)
        syn_x, syn_y = group_by_class(syn_x, syn_y, c)  # (C, ipc, ...)
        with torch.no_grad():
            g_real, f_real = class_gradients(net, real_x, real_y,
                                             chunk=class_chunk(net, real_x))
            if shard.active:
                g_real = full_batch_gradients(g_real, real_x.shape[1], per_class_n, shard)
        g_syn, f_syn = class_gradients(net, syn_x, syn_y)
        per_class = match_distance(g_real, g_syn, p.distance)  # (C,)
        loss = per_class.sum()
        if shard.active:  # replicated on every rank: each carries 1/world of it
            loss = loss / shard.world_size
        if not want_features:
            return LossOutput(loss, logs=logs)
        tap = ctx.feature_tap
        return LossOutput(
            loss,
            for_regularizer(tap, net, syn_x.flatten(0, 1), [f.flatten(0, 1) for f in f_syn]),
            syn_y.reshape(-1),
            for_regularizer(tap, net, real_x.flatten(0, 1), [f.flatten(0, 1) for f in f_real],
                            grad=False),
            real_y.reshape(-1),
            logs,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)


class DifferentiableSiameseAugmentation(DatasetCondensation):
    """DC with differentiable siamese augmentation (DSA): same draw per class on both sides."""

    method: ClassVar[str] = "dsa"

    Params = DSAParams

    def __init__(self, params: DifferentiableSiameseAugmentation.Params, *, ctx: RunContext):
        if ctx.augment is None:
            raise ValueError(
                "dsa needs a differentiable augmentation; set the recipe key `augmentation` "
                "(e.g. `augmentation: {name: dsa}`)"
            )
        super().__init__(params, ctx=ctx)
