"""DSA with k-means-chosen real batches: DSA's gradient matching (network trained on the
synthetic set, ``get_loops`` schedule, layer-wise ``ours`` distance, siamese augmentation)
in which each class's real batch is the set of representatives of k-means centres instead
of a random draw.

This borrows one ingredient of DREAM (Liu et al., ICCV 2023, Sec. 3.2: representative
matching) and nothing else of its IDC-based loop; the faithful DREAM loop is ``dream``
(``mim4dd_kit/dd_losses/dream.py``). The real batch of a class is

    B_c = { argmin_{x in pool_c} || f(x) - mu_j^c ||  :  j = 1..clusters }

with ``f`` the flattened last-block output and ``mu^c`` the k-means centres of
``{f(x) : x in pool_c}`` (``mim4dd_kit/dd_losses/kmeans.py``). The selection is refreshed
every ``interval`` calls on the same network and whenever the network is re-initialised.
Everything else is ``dsa`` (parameters and schedule inherited).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..api import Backbone, RunContext, class_table
from .dc import DifferentiableSiameseAugmentation
from .kmeans import class_pool, kmeans, nearest_points, representatives
from .params import DSAKMeansParams

__all__ = ["DSAKMeans", "class_table", "kmeans", "nearest_points"]


class DSAKMeans(DifferentiableSiameseAugmentation):
    """DSA gradient matching against k-means-selected real batches."""

    method = "dsa_kmeans"

    Params = DSAKMeansParams

    def __init__(self, params: DSAKMeans.Params, *, ctx: RunContext):
        super().__init__(params, ctx=ctx)
        self.params: DSAKMeans.Params = params
        self.selection: Tensor | None = None  # (C, k) indices into the training set

    def select(self, net: Backbone) -> Tensor:
        """Re-cluster every class's pool under ``net``; (C, k) indices of the representatives."""
        p = self.params
        table = class_pool(self.ctx.data, p.pool)
        return representatives(net, self.ctx.data.train_images, table,
                               p.clusters or self.ctx.batch_real, p.kmeans_iters)

    def real_batch(self, net: Backbone) -> tuple[Tensor, Tensor, dict[str, float]]:
        refresh = self.selection is None or self.schedule.position % self.params.interval == 0
        if refresh:
            self.selection = self.select(net)
        assert self.selection is not None
        idx = self.selection.reshape(-1)
        data = self.ctx.data
        return data.train_images[idx], data.train_labels[idx], {"kmeans_refresh": float(refresh)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "selection": self.selection}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        sel = state.get("selection")
        self.selection = None if sel is None else sel.to(self.ctx.device)
