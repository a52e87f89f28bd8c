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
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from ..api import CriticRef, Params, Regularizer, Shard
from ..training.mi import log_h_pair, nce_loss

#: named settings; a recipe's explicit fields override the preset's
PRESETS: dict[str, dict[str, Any]] = {
    # today's objective: Eq. 2.15 read literally, flattened block outputs, one joint step
    "literal": {},
    # bounded start (CRD's self-normalised discriminator, about log C + 1 per layer),
    # low-dimensional critic input, critics trained before they steer the images, and a
    # weight tied to the base method's own gradient scale (see docs/components/mim4dd.md)
    "stable": {
        "discriminator": "crd",
        "critic_input": "channel_mean",
        "center": True,
        "critic_warmup": 50,
        "critic_steps": 1,
        "ramp": 20,
        "rho": 0.1,
    },
    # no critic network (the paper's Table 2 "w.o network"): the base method's own network
    # changes every iteration (DM, DSA) or every expert (MTT), so a learned critic has
    # nothing stable to fit; the scores compare its centred, normalised per-channel means
    # directly, under CRD's discriminator, one row per class on the synthetic side (its
    # mean), with the gradient tied to the DD gradient (rho 1). The setting the paired
    # study chose on its validation split (docs/mim_study.md).
    "critic_free": {
        "discriminator": "crd",
        "critic": {"name": "identity"},
        "critic_input": "channel_mean",
        "center": True,
        "synthetic_side": "class_mean",
        "critic_warmup": 0,
        "critic_steps": 0,
        "ramp": 20,
        "rho": 1.0,
    },
}
#: the preset a recipe gets when it names none
DEFAULT_PRESET = "critic_free"


def class_mean_features(
    feats: list[Tensor], labels: Tensor
) -> tuple[list[Tensor], Tensor]:
    """Each class's mean of every feature tensor (rows in ascending class order) and those
    classes: one (K, ...) tensor per (M, ...) input, by one averaging matrix product."""
    classes, index = torch.unique(labels, return_inverse=True)
    average = F.one_hot(index, len(classes)).T.to(feats[0].dtype)  # (K, M)
    average = average / average.sum(1, keepdim=True)
    return [(average @ f.flatten(1)).view(len(classes), *f.shape[1:]) for f in feats], classes


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

    class Params(Params):
        model_config = ConfigDict(populate_by_name=True)

        preset: Literal["critic_free", "literal", "stable"] = Field(
            DEFAULT_PRESET,
            description="named setting: 'critic_free' (the default) scores each class's "
            "mean of the centred, per-channel means of the base network's features "
            "against the real samples directly (no critic network) under CRD's "
            "discriminator, gradient tied to the DD one (rho 1); "
            "'literal' is Eq. 2.15-2.17 as printed (sigmoid, a linear critic on "
            "flattened block outputs, one joint step, lambda 0.8); 'stable' is the CRD "
            "discriminator with a linear critic on pooled input, critic warm-up and "
            "steps, a ramp and rho 0.1. Fields given explicitly override the preset's; "
            "an explicit lambda without an explicit rho weights by lambda",
        )
        lam: float = Field(
            0.8, ge=0, alias="lambda", description="lambda in Eq. 2.17 (paper: 0.8)"
        )
        strict_beta: bool = Field(
            True,
            description="enforce beta > 1 as Eq. 2.17 states; false allows the paper's "
            "Table 2 ablation values 0.5 and 1.0",
        )
        beta: float = Field(2.0, gt=0, description="layer weighting base in Eq. 2.17, > 1")
        tau: float = Field(0.07, gt=0, description="temperature of the scores")
        critic: CriticRef = Field(
            default_factory=lambda: CriticRef(name="linear"),
            description="critic head per layer (paper Table 2: one fc layer is best)",
        )
        normalize: bool = Field(True, description="L2-normalise critic embeddings")
        layers: list[int] | None = Field(
            None, description="1-based blocks to regularize; null means all K blocks"
        )
        critic_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the critics")
        discriminator: Literal["sigmoid", "prior", "crd"] = Field(
            "sigmoid",
            description="h = e^s / (e^s + B): 'sigmoid' B = 1 (Eq. 2.15 literal), 'prior' "
            "B = C - 1 (Eq. 2.12), 'crd' B = (C - 1) Z with Z a detached mean of e^s",
        )
        z_mode: Literal["fixed", "tracked"] = Field(
            "fixed",
            description="crd only: Z fixed at the first call (as contrastive distillation "
            "does) or tracked as a moving average of each call's mean e^s",
        )
        z_momentum: float = Field(
            0.9, ge=0, lt=1,
            description="crd, z_mode tracked: Z <- m Z + (1 - m) mean(e^s) per call",
        )
        tap: Literal["output", "pre_pool", "pre_activation"] = Field(
            "output",
            description="where each block's features are taken: its output (post-ReLU, "
            "post-pool), before its pooling, or before its closing nonlinearity (Eq. 2.4-2.6's "
            "W^k sigma(...)); the DD loss hands these over (Backbone.features tap)",
        )
        critic_input: Literal["flatten", "channel_mean"] = Field(
            "flatten",
            description="what a critic sees of a block's (B, C, H, W) features: all of it "
            "flattened, or the per-channel spatial mean (B, C)",
        )
        center: bool = Field(
            False,
            description="subtract the real batch's mean embedding (detached, over all "
            "ranks) from both sides' critic embeddings before the normalisation: removes "
            "the direction every post-ReLU feature (and the critic's bias) shares",
        )
        synthetic_side: Literal["samples", "class_mean"] = Field(
            "samples",
            description="what stands for the synthetic side in the score matrix: every "
            "synthetic sample (Eq. 2.13-2.16 as printed), or each class's mean feature "
            "(one row per class; the same as 'samples' at one image per class, and it "
            "moves only a class's mean at more, leaving the spread within a class to the "
            "base method)",
        )
        critic_steps: int = Field(
            0, ge=0,
            description="critic-only Adam steps per iteration on the iteration's detached "
            "features, before the joint step",
        )
        critic_warmup: int = Field(
            0, ge=0,
            description="critic-only steps at the run's first iteration (on its detached "
            "features), before anything touches the images",
        )
        ramp: int = Field(
            0, ge=0,
            description="ramp the weight (lambda, or rho) linearly from 0 over this many "
            "iterations; 0 = full weight from the start",
        )
        rho: float | None = Field(
            None, gt=0,
            description="gradient-relative weight: the regularizer's image gradient is "
            "rescaled each iteration to rho times the DD gradient's norm (replaces lambda); "
            "null = weight by lambda",
        )
        rho_window: int = Field(
            1, ge=1,
            description="with rho: the DD gradient norm that rho multiplies is the smaller "
            "of this iteration's and the median of the last rho_window iterations' (this "
            "one included), so one outlying DD gradient does not enlarge the "
            "regularizer's step; 1 = this iteration's own",
        )
        lr_gradient: bool = Field(
            False,
            description="with rho: let the (rescaled) regularizer gradient reach a learned "
            "lr (MTT, BPTT); off keeps the lr the base method's alone",
        )
        diagnostics_every: int = Field(
            10, ge=0,
            description="log gradient norms, MI bounds, score means and pixel std every N "
            "iterations into losses.jsonl (0 = off); costs one extra backward of the "
            "regularizer on those iterations",
        )

        @model_validator(mode="before")
        @classmethod
        def _apply_preset(cls, data: Any) -> Any:
            if not isinstance(data, dict):
                return data
            name = data.get("preset", DEFAULT_PRESET)
            if name not in PRESETS:
                return data  # the Literal check reports it
            merged = {**PRESETS[name], **data}
            if ("lambda" in data or "lam" in data) and "rho" not in data:
                merged["rho"] = None  # an explicit lambda means: weight by lambda
            return merged

        @field_validator("beta")
        @classmethod
        def _beta_range(cls, beta: float, info: ValidationInfo) -> float:
            if info.data.get("strict_beta", True) and beta <= 1:
                raise ValueError(
                    "must be > 1 (Eq. 2.17); set strict_beta: false to run the paper's "
                    "beta ablation"
                )
            return beta

        @model_validator(mode="after")
        def _layers(self):
            if self.layers is not None and (not self.layers or min(self.layers) < 1):
                raise ValueError("layers must be a non-empty list of 1-based block indices")
            return self

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
            return feats.flatten(2).mean(2)
        return feats.flatten(1)

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
        """The DD gradient norm ``rho`` multiplies at this iteration: the smaller of
        ``dd_norm`` and the median of the last ``rho_window`` norms (this one included),
        each recorded once per call."""
        if self.params.rho_window == 1:
            return dd_norm
        with torch.no_grad():
            history = torch.cat([self.dd_norms[1:],
                                 dd_norm.detach().to(self.dd_norms).reshape(1)])
            self.dd_norms.copy_(history)
            median = history[~history.isnan()].median()  # the lower middle for even counts
        return torch.minimum(dd_norm, median.to(dd_norm))

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
