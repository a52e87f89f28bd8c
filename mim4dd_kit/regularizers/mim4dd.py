"""MIM4DD: mutual-information maximisation between synthetic and real features.

Implements the paper's contrastive NCE regularizer (Eqs. 2.14-2.17). For every selected
backbone block k a critic head g^k embeds the flattened features of both sides; the
scores ``s_ij = <g(a_syn^i), g(a_real^j)> / tau`` form one (M, N) matrix per layer, the
discriminator is ``h = sigmoid(s)`` (Eq. 2.15) and the layer loss (Eq. 2.16, as a
quantity to minimise) is

    L_NCE^k = -( mean_P log h + (C - 1) * mean_Q log(1 - h) )

with P the same-class pairs and Q the rest. The total added to the DD loss (Eq. 2.17) is
``lambda * sum_k L_NCE^k / beta^(K-1-k)``. See docs/components/mim4dd.md.

In a multi-process run the real features are split over ranks (columns of the score
matrices); each rank's NCE divides its columns' sums by the *global* pair counts, so the
rank losses (and gradients) sum to the single-process ones (docs/distributed.md).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from ..contracts import CriticRef, Params, Shard


def nce_loss(
    scores: Tensor,
    positive: Tensor,
    num_classes: int,
    pair_counts: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Eq. 2.16 for one layer, as a loss. ``scores`` and ``positive`` are (M, N).

    ``log h = -softplus(-s)`` and ``log(1 - h) = -softplus(s)`` are the stable forms of
    the log-sigmoids. A batch without positive (or negative) pairs contributes 0 for that
    term rather than NaN. ``pair_counts`` (positive, negative) replaces the counts of this
    matrix as the denominators: with the counts of the full matrix, the loss of a block
    of its columns is that block's share of the full loss (sharded runs).
    """
    pos = positive.to(scores.dtype)
    neg = 1.0 - pos
    log_h = -F.softplus(-scores)
    log_1mh = -F.softplus(scores)
    n_pos, n_neg = pair_counts if pair_counts is not None else (pos.sum(), neg.sum())
    mean_pos = (log_h * pos).sum() / n_pos.clamp(min=1.0)
    mean_neg = (log_1mh * neg).sum() / n_neg.clamp(min=1.0)
    return -(mean_pos + (num_classes - 1) * mean_neg)


def mi_lower_bound(
    scores: Tensor, positive: Tensor, num_classes: int, num_positive: Tensor | None = None
) -> Tensor:
    """Eq. 2.14: ``log(C - 1) + E_P[log h]``, the MI estimate the loss maximises (nats).

    ``num_positive`` replaces this matrix's positive count (see :func:`nce_loss`); the
    sum over column blocks of their bounds then has ``log(C - 1)`` once per block.
    """
    pos = positive.to(scores.dtype)
    n_pos = pos.sum() if num_positive is None else num_positive
    mean_pos = (-F.softplus(-scores) * pos).sum() / n_pos.clamp(min=1.0)
    return math.log(max(num_classes - 1, 1)) + mean_pos


def layer_weights(num_layers: int, beta: float) -> list[float]:
    """Eq. 2.17's per-layer factors ``1 / beta^(K-1-k)`` for k = 1..K (deeper = heavier)."""
    return [1.0 / beta ** (num_layers - 1 - k) for k in range(1, num_layers + 1)]


class MIM4DD(nn.Module):
    """MIM4DD contrastive mutual-information regularizer (Eqs. 2.14-2.17)."""

    #: accepts real features split over ranks when :attr:`shard` is set (by the engine)
    shardable: ClassVar[bool] = True

    class Params(Params):
        model_config = ConfigDict(populate_by_name=True)

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
        self.critics = nn.ModuleList(
            registry.build("critics", params.critic, in_features=feature_dims[k - 1])
            for k in self.layers
        )
        self.lr = params.critic_lr
        self.last_logs: dict[str, float] = {}
        #: the rank's part of a sharded run: the real features are its rows only
        self.shard = Shard()

    def scores(self, syn_feats: list[Tensor], real_feats: list[Tensor]) -> list[Tensor]:
        """One (M, N) score matrix per selected layer."""
        out = []
        for critic, k in zip(self.critics, self.layers, strict=True):
            zs = critic(syn_feats[k - 1].flatten(1))  # (M, E)
            zr = critic(real_feats[k - 1].flatten(1))  # (N, E)
            if self.params.normalize:
                zs, zr = F.normalize(zs, dim=1), F.normalize(zr, dim=1)
            out.append(zs @ zr.T / self.params.tau)
        return out

    def forward(
        self,
        syn_feats: list[Tensor],
        syn_labels: Tensor,
        real_feats: list[Tensor],
        real_labels: Tensor,
    ) -> Tensor:
        if len(syn_feats) != self.num_layers or len(real_feats) != self.num_layers:
            raise ValueError(
                f"mim4dd expects {self.num_layers} feature tensors per side, got "
                f"{len(syn_feats)} (syn) and {len(real_feats)} (real)"
            )
        positive = syn_labels[:, None] == real_labels[None, :]  # (M, N)
        counts = None
        if self.shard.active:  # this rank holds some columns: use the global pair counts
            n_pos = positive.sum().to(torch.float64)
            both = self.shard.sum(torch.stack([n_pos, positive.numel() - n_pos]))
            both = both.to(syn_feats[0].dtype)
            counts = (both[0], both[1])
        losses = torch.stack(
            [nce_loss(s, positive, self.num_classes, counts)
             for s in self.scores(syn_feats, real_feats)]
        )
        values = losses.detach().tolist()
        self.last_logs = {f"nce{k}": v for k, v in zip(self.layers, values, strict=True)}
        return self.params.lam * (losses * self.weights).sum()
