"""CAFE (Wang et al., "CAFE: Learning to Condense Dataset by Aligning Features", CVPR 2022).

One network sees a real batch and the synthetic set, each in a single forward over all
classes. With f^k the block-k tensor at the ``tap`` (default ``pre_pool``: after the
nonlinearity, before the block's pooling) and g the flattened final block *output*:

    L_align = sum_k w_k sum_c || mean f^k(x_real^c) - mean f^k(x_syn^c) ||^2
            + (output_weight + embed_weight) sum_c || mean g(x_real^c) - mean g(x_syn^c) ||^2
    L_disc  = sum_j CE( z_j / T, y_real^j ),   z_jc = < g(x_real^j), mean g(x_syn^c) >
    L_DD    = L_align + disc_weight * L_disc

which is the reference ``distill.py``'s loss: pre-pool maps of blocks 1-3 at 0.1 / 0.1 / 1,
the pooled final map at 1, a second class-mean term on the (same) final embedding at 1,
and the discrimination term at ``inner_weight`` 0.01, with sums over classes and samples
(``MSELoss(reduction='sum')``, ``CrossEntropyLoss(reduction='sum')``).

Network schedule. ``schedule: watcher`` (the reference's): a network lives until its
accuracy on real training images stops moving (range of the last ``window`` readings below
``lambda_1``), then the next call builds a new one; between two image updates it trains
epoch by epoch on the synthetic set until its accuracy has moved (range above
``lambda_2``). ``schedule: fixed`` keeps DC's outer/inner loops instead. The schedule's
whole state is in ``state_dict`` for exact resume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import (
    Backbone,
    DDLoss,
    LossOutput,
    RunContext,
    SyntheticState,
    Tap,
    for_regularizer,
    tapped_features,
)
from ..training.loop import sgd_epochs, sgd_steps
from ..training.networks import PersistentNetwork, TrainedNetwork
from ..training.stats import class_means
from .params import CAFEParams


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
        if w == 0:
            continue
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


def reference_layer_weights(num_blocks: int) -> list[float]:
    """0.1 on every block but the last, 1 on the last: the reference's 0.1 / 0.1 / 1 on
    the three ConvNet blocks (``--fourth_weight``, ``--third_weight``, ``--second_weight``)."""
    return [0.1] * (num_blocks - 1) + [1.0]


def taps_and_outputs(net: Backbone, x: Tensor, tap: Tap) -> tuple[list[Tensor], list[Tensor]]:
    """Each block's tensor at ``tap`` and each block's output, from one forward pass where
    the backbone uses the base class's block loop (two passes otherwise)."""
    if tap == "output":
        out = tapped_features(net, x)
        return out, out
    if isinstance(net, Backbone) and type(net).features is Backbone.features:
        taps, outs = [], []
        for k in range(len(net.blocks)):
            tapped, x = net.tap_block(k, x, tap)
            taps.append(tapped)
            outs.append(x)
        return taps, outs
    return tapped_features(net, x, tap), net.features(x)


def cafe_terms(
    net: Backbone, real: Tensor, real_y: Tensor, syn_x: Tensor, syn_y: Tensor,
    num_classes: int, p: CAFE.Params,
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """(L_align, L_disc, real block outputs, synthetic block outputs) for one network.

    Real features are computed without autograd; the synthetic ones carry gradient.
    """
    with torch.no_grad():
        real_taps, real_out = taps_and_outputs(net, real, p.tap)
    syn_taps, syn_out = taps_and_outputs(net, syn_x, p.tap)
    k = len(syn_taps)
    weights = p.layer_weights if p.layer_weights is not None else reference_layer_weights(k)
    if len(weights) != k:
        raise ValueError(f"cafe layer_weights has {len(weights)} values but the "
                         f"backbone has {k} blocks")
    final = p.output_weight + p.embed_weight  # the same flattened final output, twice
    align = (alignment_loss(real_taps, real_y, syn_taps, syn_y, num_classes, weights)
             + alignment_loss(real_out[-1:], real_y, syn_out[-1:], syn_y, num_classes, [final]))
    disc = discrimination_loss(real_out[-1], real_y, syn_out[-1], syn_y, num_classes,
                               p.temperature)
    return align, disc, real_out, syn_out


class WatchedNetwork(TrainedNetwork):
    """The reference's "dynamic bi-level optimisation": accuracy watchers decide when a
    network is replaced and how long it trains between image updates.

    A reading is the network's accuracy on ``per_class`` random real training images of
    every class, carried as the reference computes it: ``s_n = a_n + s_(n-1) / C`` (its
    running sum is divided by C each time and reset only when a watcher fires).

    - outer watcher, after each image update: a reading; once ``window`` readings are held,
      range < ``lambda_1`` marks the network finished (the next call builds a new one),
      else the oldest is dropped;
    - inner watcher, before each image update of a network that is not new: one epoch of
      SGD on the detached synthetic set, then a reading, until ``window`` readings have a
      range > ``lambda_2`` (or ``max_inner_epochs`` epochs, a bound the reference lacks).
    """

    def __init__(self, ctx: RunContext, *, lr: float, momentum: float, lambda_1: float,
                 lambda_2: float, window: int, per_class: int, max_inner_epochs: int):
        super().__init__(ctx, lr=lr, momentum=momentum)
        self.lambda_1, self.lambda_2, self.window = lambda_1, lambda_2, window
        self.per_class, self.max_inner_epochs = per_class, max_inner_epochs
        self.calls = 0
        self.networks = 0  # networks built so far (the reference's outer iterations)
        self.finished = False  # the outer watcher fired on the current network
        self.outer: list[float] = []
        self.outer_carry = 0.0
        self.last_inner_epochs = 0
        self.capped = 0  # inner loops stopped by max_inner_epochs

    @torch.no_grad()
    def reading(self, carry: float) -> float:
        """``a + carry / C``, a the network's accuracy (fraction) on fresh real images."""
        assert self.net is not None
        x, y = self.ctx.data.sample_per_class(self.per_class)
        logits = self.ctx.nograd_logits(self.net, x)
        acc = float((logits.argmax(1) == y).float().mean())
        return acc + carry / self.ctx.data.info.num_classes

    def advance(self, train_epoch: Callable[[Backbone, torch.optim.Optimizer], None]
                ) -> Backbone:
        """The network for this call: a new one, or the current one after its inner loop."""
        self.last_inner_epochs = 0
        if self.net is None or self.finished:
            self._new_net()
            self.networks += 1
            self.finished, self.outer, self.outer_carry = False, [], 0.0
        else:
            assert self.opt is not None
            self.net.train()
            self.net.requires_grad_(True)
            readings: list[float] = []
            carry = 0.0
            while True:
                train_epoch(self.net, self.opt)
                self.last_inner_epochs += 1
                carry = self.reading(carry)
                readings.append(carry)
                if len(readings) == self.window:
                    if max(readings) - min(readings) > self.lambda_2:
                        break
                    readings.pop(0)
                if self.last_inner_epochs >= self.max_inner_epochs:
                    self.capped += 1
                    break
        self.calls += 1
        assert self.net is not None
        self.net.train()
        self.net.requires_grad_(False)
        return self.net

    def watch(self) -> None:
        """The outer watcher's reading after an image update (the network is unchanged by
        it, so reading before the engine's step gives the reference's value)."""
        self.outer_carry = self.reading(self.outer_carry)
        self.outer.append(self.outer_carry)
        if len(self.outer) == self.window:
            if max(self.outer) - min(self.outer) < self.lambda_1:
                self.finished = True
            else:
                self.outer.pop(0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls, "networks": self.networks, "finished": self.finished,
            "outer": list(self.outer), "outer_carry": self.outer_carry,
            "capped": self.capped, **self._net_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls, self.networks = int(state["calls"]), int(state["networks"])
        self.finished, self.outer = bool(state["finished"]), list(state["outer"])
        self.outer_carry, self.capped = float(state["outer_carry"]), int(state["capped"])
        self._restore_net(state)


class CAFE(DDLoss):
    """Layer-wise feature alignment plus discrimination loss (CAFE)."""

    learns_lr: ClassVar[bool] = False

    Params = CAFEParams

    def __init__(self, params: CAFE.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx
        self.schedule: PersistentNetwork | WatchedNetwork
        if params.schedule == "fixed":
            self.schedule = PersistentNetwork(ctx, outer_loop=params.outer_loop,
                                              lr=params.net_lr, momentum=params.net_momentum)
        else:
            self.schedule = WatchedNetwork(
                ctx, lr=params.net_lr, momentum=params.net_momentum, lambda_1=params.lambda_1,
                lambda_2=params.lambda_2, window=params.window,
                per_class=params.watch_per_class, max_inner_epochs=params.max_inner_epochs)

    @property
    def net(self) -> Backbone | None:
        return self.schedule.net

    def _train_net(self, net: Backbone, opt: torch.optim.Optimizer, syn: SyntheticState) -> None:
        """Fixed schedule: ``inner_loop`` SGD steps on detached synthetic images."""
        sgd_steps(net, opt, syn.images.detach(), syn.labels, steps=self.params.inner_loop,
                  batch=self.params.batch_train, augment=self.ctx.augment)

    def _train_epoch(self, net: Backbone, opt: torch.optim.Optimizer,
                     syn: SyntheticState) -> None:
        """Watcher schedule: one shuffled epoch over the detached synthetic set."""
        sgd_epochs(net, opt, syn.images.detach(), syn.labels, epochs=1,
                   batch=self.params.batch_train or len(syn.labels), augment=self.ctx.augment)

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx, p = self.ctx, self.params
        if isinstance(self.schedule, WatchedNetwork):
            net = self.schedule.advance(lambda n, o: self._train_epoch(n, o, syn))
        else:
            net = self.schedule.advance(lambda n, o: self._train_net(n, o, syn))
        c = ctx.data.info.num_classes
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        syn_x, syn_y = syn.images, syn.labels
        if ctx.augment is not None:
            real, syn_x = ctx.augment.siamese(real, real_y, syn_x, syn_y)
        align, disc, real_out, syn_out = cafe_terms(net, real, real_y, syn_x, syn_y, c, p)
        loss = align + p.disc_weight * disc
        logs = {"cafe_align": float(align.detach()), "cafe_disc": float(disc.detach())}
        if isinstance(self.schedule, WatchedNetwork):
            self.schedule.watch()
            logs.update({"cafe_networks": float(self.schedule.networks),
                         "cafe_inner_epochs": float(self.schedule.last_inner_epochs),
                         "cafe_watch_acc": self.schedule.outer_carry})
        if not want_features:
            return LossOutput(loss, logs=logs)
        # the regularizer gets the block outputs (or its tap), as from every other method
        syn_feats = for_regularizer(ctx.feature_tap, net, syn_x, syn_out)
        real_feats = for_regularizer(ctx.feature_tap, net, real, real_out, grad=False)
        return LossOutput(loss, syn_feats, syn_y, real_feats, real_y, logs)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)
