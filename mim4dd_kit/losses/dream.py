"""DREAM: Efficient Dataset Distillation by Representative Matching (Liu, Gu, Wang, Zhu,
Jiang & You, ICCV 2023), on top of gradient matching.

Gradient matching (``dc``) draws each class's real batch at random; DREAM matches against
*representative* real images instead (paper Sec. 3.2): the embeddings of a class's real
images under the current network are clustered by k-means into ``clusters`` groups, and
the real sample nearest each centre is taken, so the real batch of a class is

    B_c = { argmin_{x in pool_c} || f(x) - mu_j^c ||  :  j = 1..clusters }

with ``f`` the flattened last-block output (the features before the classifier, reference
``net.embed``) and ``mu^c`` the k-means centres of ``{f(x) : x in pool_c}``. The selection
is refreshed every ``interval`` calls on the same network and whenever the network is
re-initialised (reference ``condense.py``: ``ot % interval == 0`` within each network's
life). Everything else is ``dc`` (``dream`` inherits its parameters and schedule).

k-means runs for all classes at once on (C, P, D) tensors: random distinct points of each
class as initial centres (global torch RNG), batched distances, ``kmeans_iters`` Lloyd
iterations (stopping early once no assignment changes, after which nothing would move), an
empty cluster keeping its centre.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..contracts import Backbone, RealData, RunContext, class_table
from .dc import DatasetCondensation

EMBED_CHUNK = 1024  # images per no-grad forward when embedding a pool


def kmeans(
    x: Tensor, k: int, iters: int, valid: Tensor | None = None, init: Tensor | None = None
) -> Tensor:
    """Lloyd's k-means of every group at once: ``x`` (C, P, D) -> centres (C, k, D).

    ``valid`` (C, P) bool marks the real points (padding is ignored). Initial centres are
    the points ``init`` (C, k) or else ``k`` distinct valid points per group drawn from the
    global torch RNG; each group needs at least ``k`` valid points.
    """
    c, p, d = x.shape
    if valid is None:
        valid = torch.ones(c, p, dtype=torch.bool, device=x.device)
    if int(valid.sum(1).min()) < k:
        raise ValueError(f"k-means with {k} clusters needs at least {k} points per group")
    if init is None:
        keys = torch.rand(c, p, device=x.device).masked_fill(~valid, 2.0)
        init = keys.topk(k, dim=1, largest=False).indices  # (C, k)
    centres = x.gather(1, init[..., None].expand(c, k, d))
    weight = valid.to(x.dtype)[..., None]  # (C, P, 1)
    assign: Tensor | None = None
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(-1)  # (C, P)
        if assign is not None and torch.equal(new, assign):
            break  # a fixed point: further iterations change nothing
        assign = new
        member = F.one_hot(assign, k).to(x.dtype) * weight  # (C, P, k)
        sums = member.transpose(1, 2) @ x  # (C, k, D)
        counts = member.sum(1)[..., None]  # (C, k, 1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def nearest_points(x: Tensor, centres: Tensor, valid: Tensor | None = None) -> Tensor:
    """Index (C, k) into P of the valid point of ``x`` (C, P, D) nearest each centre (C, k, D)."""
    dist = torch.cdist(centres, x)  # (C, k, P)
    if valid is not None:
        dist = dist.masked_fill(~valid[:, None, :], float("inf"))
    return dist.argmin(-1)


class DREAM(DatasetCondensation):
    """Gradient matching against representative (k-means-selected) real batches (DREAM)."""

    method = "dream"

    class Params(DatasetCondensation.Params):
        clusters: int | None = Field(
            None, ge=1, description="k-means centres = real images matched per class; None: "
            "synthetic.batch_real (the reference clusters into batch_real, default 128)"
        )
        interval: int = Field(
            10, ge=1, description="calls between re-clusterings on one network (reference "
            "--interval 10); a new network always re-clusters"
        )
        kmeans_iters: int = Field(
            100, ge=1, description="Lloyd iterations at most (fast_pytorch_kmeans max_iter "
            "100, used by the reference)"
        )
        pool: int | None = Field(
            None, ge=1, description="real images per class that are clustered, drawn at "
            "random at each refresh; None: the whole class (reference)"
        )

    def __init__(self, params: DREAM.Params, *, ctx: RunContext):
        super().__init__(params, ctx=ctx)
        self.params: DREAM.Params = params
        self.selection: Tensor | None = None  # (C, k) indices into the training set
        self._table: Tensor | None = None

    def pool(self) -> Tensor:
        """(C, P) training-set indices to cluster, -1 where a class has fewer than P."""
        data: RealData = self.ctx.data
        if self._table is None:
            self._table = class_table(data.train_labels, data.info.num_classes)
        table = self._table
        size = self.params.pool
        if size is not None and size < table.shape[1]:
            keys = torch.rand(table.shape, device=table.device).masked_fill(table < 0, 2.0)
            table = table.gather(1, keys.topk(size, dim=1, largest=False).indices)
        return table

    def select(self, net: Backbone) -> Tensor:
        """Re-cluster every class's pool under ``net``; (C, k) indices of the representatives."""
        data, p = self.ctx.data, self.params
        table = self.pool()
        valid = table >= 0
        c, width = table.shape
        flat = table.clamp(min=0).reshape(-1)
        with torch.no_grad():
            emb = torch.cat([net.embed(data.train_images[idx]) for idx in flat.split(EMBED_CHUNK)])
        emb = emb.reshape(c, width, -1)  # (C, P, D)
        k = min(p.clusters or self.ctx.batch_real, int(valid.sum(1).min()))
        centres = kmeans(emb, k, p.kmeans_iters, valid)
        return table.gather(1, nearest_points(emb, centres, valid))

    def real_batch(self, net: Backbone) -> tuple[Tensor, Tensor, dict[str, float]]:
        refresh = self.selection is None or self.schedule.position % self.params.interval == 0
        if refresh:
            self.selection = self.select(net)
        assert self.selection is not None
        idx = self.selection.reshape(-1)
        data = self.ctx.data
        return data.train_images[idx], data.train_labels[idx], {"dream_refresh": float(refresh)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "selection": self.selection}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        sel = state.get("selection")
        self.selection = None if sel is None else sel.to(self.ctx.device)
