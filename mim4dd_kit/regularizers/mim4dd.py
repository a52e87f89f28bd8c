"""MIM4DD: mutual-information maximisation between synthetic and real features.

Implements the paper's contrastive NCE regularizer (Eqs. 2.10-2.17). For every selected
backbone block k a critic head g^k embeds the features of both sides (flattened, or
pooled per channel); the scores ``s_ij = <g(a_syn^i), g(a_real^j)> / tau`` form one
(M, N) matrix per layer. Every discriminator the module offers is a shifted sigmoid,
``h = e^s / (e^s + B) = sigmoid(s - log B)``:

- ``sigmoid`` (Eq. 2.15 read literally): ``B = 1``;
- ``prior`` (Eq. 2.12's class-prior odds): ``B = C - 1``;
- ``crd`` (the contrastive-distillation form the paper builds on): ``B = (C - 1) Z`` with
  ``Z`` a detached mean of ``e^s`` (fixed at the first call, or tracked), kept in the
  module's state so a resumed run continues with the same constant.

The layer loss (Eq. 2.16, as a quantity to minimise) is

    L_NCE^k = -( mean_P log h + (C - 1) * mean_Q log(1 - h) )

with P the same-class pairs and Q the rest. The total added to the DD loss (Eq. 2.17) is
``w(t) * sum_k L_NCE^k / beta^(K-1-k)`` with ``w(t)`` lambda times the ramp factor (or the
ramp factor alone when the engine rescales the gradient to ``rho`` times the DD one).
See docs/components/mim4dd.md.

In a multi-process run the real features are split over ranks (columns of the score
matrices); each rank's NCE divides its columns' sums by the *global* pair counts, and
``Z`` is the global mean, so the rank losses (and gradients) sum to the single-process
ones (docs/distributed.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import Regularizer, Shard
from ..training.mi import log_h_pair, nce_loss

# the parameters model and its presets, defined without torch
from .params import DEFAULT_PRESET as DEFAULT_PRESET
from .params import PRESETS as PRESETS
from .params import MIM4DDParams


def class_mean_features(
    feats: list[Tensor], labels: Tensor
) -> tuple[list[Tensor], Tensor]:
    """Each class's mean of every feature tensor (rows in ascending class order) and those
    classes: one (K, ...) tensor per (M, ...) input, by one averaging matrix product."""
    classes, index = torch.unique(labels, return_inverse=True)
    average = F.one_hot(index, len(classes)).T.to(feats[0].dtype)  # (K, M)
    average = average / average.sum(1, keepdim=True)
    return [(average @ f.flatten(1)).view(len(classes), *f.shape[1:]) for f in feats], classes


def channel_means(feats: Tensor) -> Tensor:
    """Each row's per-channel mean of a block's ``(N, C, ...)`` features: ``(N, C)``."""
    return feats.flatten(2).mean(2)


def _channel_mean_view(feats: list[Tensor]) -> list[Tensor]:
    return [channel_means(f) if f.dim() > 2 else f for f in feats]


def layer_weights(num_layers: int, beta: float) -> list[float]:
    """Eq. 2.17's per-layer factors ``1 / beta^(K-1-k)`` for k = 1..K (deeper = heavier)."""
    return [1.0 / beta ** (num_layers - 1 - k) for k in range(1, num_layers + 1)]


def ramp_factor(iteration: int, ramp: int) -> float:
    """The weight's factor at 0-based ``iteration``: ``iteration / ramp`` up to 1."""
    return 1.0 if ramp <= 0 else min(1.0, iteration / ramp)


class MIM4DD(Regularizer):
    """MIM4DD contrastive mutual-information regularizer (Eqs. 2.14-2.17)."""

    #: accepts real features split over ranks when :attr:`shard` is set (by the engine)
    shardable: ClassVar[bool] = True
    #: the engine passes ``feature_shapes`` (per-block shapes without the batch)
    takes_feature_shapes: ClassVar[bool] = True

    Params = MIM4DDParams

    def __init__(
        self,
        params: MIM4DD.Params,
        *,
        num_classes: int,
        feature_dims: list[int],
        registry,
        feature_shapes: list[tuple[int, ...]] | None = None,
    ):
        super().__init__()
        self.params = params
        self.num_classes = num_classes
        self.num_layers = len(feature_dims)
        layers = params.layers or list(range(1, self.num_layers + 1))
        if max(layers) > self.num_layers:
            raise ValueError(
                f"layers {layers} asks for a block beyond the backbone's {self.num_layers}"
            )
        self.layers = sorted(set(layers))
        weights = layer_weights(self.num_layers, params.beta)
        self.register_buffer(
            "weights", torch.tensor([weights[k - 1] for k in self.layers]), persistent=False
        )
        if params.critic_input == "channel_mean":
            if feature_shapes is None:
                raise ValueError("critic_input channel_mean needs the blocks' feature shapes")
            in_dims = [int(feature_shapes[k - 1][0]) for k in self.layers]
        else:
            in_dims = [feature_dims[k - 1] for k in self.layers]
        self.critics = nn.ModuleList(
            registry.build("critics", params.critic, in_features=d) for d in in_dims
        )
        # log Z per layer (crd); NaN until the first call sets it. Saved with the state.
        self.register_buffer("log_z", torch.full((len(self.layers),), math.nan))
        # the last rho_window DD gradient norms (rho), oldest first; NaN: not yet seen
        self.register_buffer("dd_norms", torch.full((params.rho_window,), math.nan,
                                                    dtype=torch.float64))
        self.lr = params.critic_lr
        self.last_logs: dict[str, float] = {}
        #: detached (scores, positive, counts, offsets) of the last call, for diagnostics
        self.last_scores: tuple[list[Tensor], Tensor, Any, list[Tensor]] | None = None
        #: 0-based iteration of the run, set by the engine before each call (ramp)
        self.iteration = 0
        #: the rank's part of a sharded run: the real features are its rows only
        self.shard = Shard()

    # -- pieces ---------------------------------------------------------------------------
    def _critic_view(self, feats: Tensor) -> Tensor:
        if self.params.critic_input == "channel_mean" and feats.dim() > 2:
            return channel_means(feats)
        return feats.flatten(1)

    def real_view(self) -> Callable[[list[Tensor]], list[Tensor]] | None:
        """Under ``critic_input: channel_mean`` the real side is read only through each
        block's per-channel means, which a DD loss may take chunk by chunk: this method
        reads the (N, C_k) means exactly as the (N, C_k, H, W) features."""
        if self.params.critic_input != "channel_mean":
            return None
        return _channel_mean_view

    def scores(self, syn_feats: list[Tensor], real_feats: list[Tensor]) -> list[Tensor]:
        """One (M, N) score matrix per selected layer."""
        out = []
        for critic, k in zip(self.critics, self.layers, strict=True):
            zs = critic(self._critic_view(syn_feats[k - 1]))  # (M, E)
            zr = critic(self._critic_view(real_feats[k - 1]))  # (N, E)
            if self.params.center:
                mean = self._real_mean(zr)
                zs, zr = zs - mean, zr - mean
            if self.params.normalize:
                zs, zr = F.normalize(zs, dim=1), F.normalize(zr, dim=1)
            out.append(zs @ zr.T / self.params.tau)
        return out

    def _real_mean(self, real_view: Tensor) -> Tensor:
        """The detached mean row of the real embeddings, over all ranks' rows."""
        with torch.no_grad():
            if not self.shard.active:
                return real_view.mean(0)
            total = torch.cat([real_view.sum(0), real_view.new_tensor([len(real_view)])])
            total = self.shard.sum(total.double())
            return (total[:-1] / total[-1].clamp(min=1.0)).to(real_view.dtype)

    def weight(self) -> float:
        """The factor of the layer sum at :attr:`iteration`: lambda times the ramp factor,
        or 1 under ``rho`` (the engine then applies rho and the ramp to the gradient, so
        the critics keep a full-strength gradient of their own)."""
        if self.params.rho is not None:
            return 1.0
        return self.params.lam * ramp_factor(self.iteration, self.params.ramp)

    def image_scale(self) -> float | None:
        """Under ``rho``: the target ratio of the regularizer's image-gradient norm to the
        DD one at :attr:`iteration` (rho times the ramp factor); None without rho."""
        if self.params.rho is None:
            return None
        return self.params.rho * ramp_factor(self.iteration, self.params.ramp)

    def reference_norm(self, dd_norm: Tensor) -> Tensor:
        """The DD gradient norm ``rho`` multiplies at this iteration: ``dd_norm``, capped
        at ``rho_cap`` times the median of the last ``rho_window`` norms (this one
        included), each recorded once per call."""
        if self.params.rho_window == 1:
            return dd_norm
        with torch.no_grad():
            history = torch.cat([self.dd_norms[1:],
                                 dd_norm.detach().to(self.dd_norms).reshape(1)])
            self.dd_norms.copy_(history)
            median = history[~history.isnan()].median()  # the lower middle for even counts
        return torch.minimum(dd_norm, self.params.rho_cap * median.to(dd_norm))

    def _offsets(self, scores: list[Tensor]) -> list[Tensor | float]:
        """``log B`` per layer; for crd, sets (first call) or tracks ``log Z``."""
        p, c = self.params, self.num_classes
        log_c1 = math.log(max(c - 1, 1))
        if p.discriminator == "sigmoid":
            return [0.0] * len(scores)
        if p.discriminator == "prior":
            return [log_c1] * len(scores)
        with torch.no_grad():
            # log mean e^s over the full matrix (all ranks): logsumexp, then - log count
            lse = torch.stack([torch.logsumexp(
                s.flatten().to(torch.promote_types(s.dtype, torch.float32)), 0) for s in scores])
            count = torch.tensor(float(scores[0].numel()), dtype=lse.dtype, device=lse.device)
            if self.shard.active:
                peak = self.shard_max(lse)
                total = self.shard.sum(torch.cat([torch.exp(lse - peak), count[None]]))
                lse, count = peak + torch.log(total[:-1]), total[-1]
            log_mean = (lse - torch.log(count)).to(self.log_z.dtype)
            unset = torch.isnan(self.log_z)
            if p.z_mode == "fixed":
                self.log_z.copy_(torch.where(unset, log_mean, self.log_z))
            else:
                m = p.z_momentum
                tracked = torch.logaddexp(self.log_z + math.log(m) if m > 0 else
                                          torch.full_like(self.log_z, -math.inf),
                                          log_mean + math.log1p(-m))
                self.log_z.copy_(torch.where(unset, log_mean, tracked))
        return [log_c1 + self.log_z[i].to(s.dtype) for i, s in enumerate(scores)]

    def shard_max(self, t: Tensor) -> Tensor:
        """Element-wise max of ``t`` over ranks (a stable shift for the sharded Z)."""
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def layer_losses(
        self,
        syn_feats: list[Tensor],
        syn_labels: Tensor,
        real_feats: list[Tensor],
        real_labels: Tensor,
    ) -> Tensor:
        """The unweighted ``L_NCE^k`` of every selected layer, a (len(layers),) tensor."""
        if len(syn_feats) != self.num_layers or len(real_feats) != self.num_layers:
            raise ValueError(
                f"mim4dd expects {self.num_layers} feature tensors per side, got "
                f"{len(syn_feats)} (syn) and {len(real_feats)} (real)"
            )
        if self.params.synthetic_side == "class_mean":
            syn_feats, syn_labels = class_mean_features(syn_feats, syn_labels)
        positive = syn_labels[:, None] == real_labels[None, :]  # (M, N)
        counts = None
        if self.shard.active:  # this rank holds some columns: use the global pair counts
            n_pos = positive.sum().to(torch.float64)
            both = self.shard.sum(torch.stack([n_pos, positive.numel() - n_pos]))
            both = both.to(syn_feats[0].dtype)
            counts = (both[0], both[1])
        scores = self.scores(syn_feats, real_feats)
        offsets = self._offsets(scores)
        losses = torch.stack(
            [nce_loss(s, positive, self.num_classes, counts, o)
             for s, o in zip(scores, offsets, strict=True)]
        )
        self.last_scores = ([s.detach() for s in scores], positive, counts,
                            [o.detach() if isinstance(o, Tensor) else torch.tensor(o)
                             for o in offsets])
        return losses

    def forward(
        self,
        syn_feats: list[Tensor],
        syn_labels: Tensor,
        real_feats: list[Tensor],
        real_labels: Tensor,
    ) -> Tensor:
        losses = self.layer_losses(syn_feats, syn_labels, real_feats, real_labels)
        values = losses.detach().tolist()
        self.last_logs = {f"nce{k}": v for k, v in zip(self.layers, values, strict=True)}
        return self.weight() * (losses * self.weights).sum()

    def critic_loss(
        self,
        syn_feats: list[Tensor],
        syn_labels: Tensor,
        real_feats: list[Tensor],
        real_labels: Tensor,
    ) -> Tensor:
        """The layer sum without lambda or ramp: what critic-only steps minimise."""
        losses = self.layer_losses(syn_feats, syn_labels, real_feats, real_labels)
        return (losses * self.weights).sum()

    def diagnostics(self) -> dict[str, float]:
        """Per layer, from the last call: Eq. 2.14's MI bound (``mi{k}``) and the mean
        score of positive and negative pairs (``pos{k}``, ``neg{k}``). In a sharded run
        each value is this rank's share (the sums over ranks are the full values)."""
        if self.last_scores is None:
            return {}
        scores, positive, counts, offsets = self.last_scores
        pos = positive.to(scores[0].dtype)
        if counts is None:
            n_pos, n_neg = pos.sum(), (1.0 - pos).sum()
        else:
            n_pos, n_neg = counts
        n_pos, n_neg = n_pos.clamp(min=1.0), n_neg.clamp(min=1.0)
        const = math.log(max(self.num_classes - 1, 1)) if self.shard.rank == 0 else 0.0
        out: dict[str, float] = {}
        for k, s, o in zip(self.layers, scores, offsets, strict=True):
            log_h = log_h_pair(s, o.to(s.dtype))[0]
            out[f"mi{k}"] = const + float((log_h * pos).sum() / n_pos)
            out[f"pos{k}"] = float((s * pos).sum() / n_pos)
            out[f"neg{k}"] = float((s * (1.0 - pos)).sum() / n_neg)
        return out
