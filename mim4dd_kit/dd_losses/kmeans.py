"""Shared k-means machinery for representative real batches (``dream``, ``dsa_kmeans``).

k-means runs for all classes at once on (C, P, D) tensors: random distinct points of each
class as initial centres (global torch RNG), batched distances, at most ``iters`` Lloyd
iterations (stopping early once no assignment changes, after which nothing would move), an
empty cluster keeping its centre. The representative of a centre is the valid point
nearest to it (reference ``NEW_Strategy.query``, Yanqing0327/DREAM ``new_strategy.py:17-29``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Backbone, RealData, class_table

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


def class_pool(data: RealData, size: int | None = None) -> Tensor:
    """(C, P) training-set indices of every class (padded -1); with ``size``, ``size``
    distinct random ones per class (global torch RNG)."""
    table = class_table(data.train_labels, data.info.num_classes)
    if size is not None and size < table.shape[1]:
        keys = torch.rand(table.shape, device=table.device).masked_fill(table < 0, 2.0)
        table = table.gather(1, keys.topk(size, dim=1, largest=False).indices)
    return table


def representatives(
    net: Backbone, images: Tensor, table: Tensor, k: int, iters: int,
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Cluster the embeddings ``net.embed`` of ``images[table]`` per class into ``k``
    centres; (C, k) indices (into ``images``) of the image nearest each centre.

    ``table`` (C, P) holds indices into ``images``, -1 for padding; ``k`` is capped at the
    smallest class. The embedding pass runs under ``no_grad`` in chunks; ``prepare`` maps
    each chunk of images before the network (e.g. back to pixel values).
    """
    valid = table >= 0
    c, width = table.shape
    flat = table.clamp(min=0).reshape(-1)
    with torch.no_grad():
        prep = prepare or (lambda x: x)
        emb = torch.cat([net.embed(prep(images[idx])) for idx in flat.split(EMBED_CHUNK)])
    emb = emb.reshape(c, width, -1)  # (C, P, D)
    k = min(k, int(valid.sum(1).min()))
    centres = kmeans(emb, k, iters, valid)
    return table.gather(1, nearest_points(emb, centres, valid))
