"""The feature hand-off from a DD loss to a regularizer at the run's feature tap
(``ctx.feature_tap``).

A DD loss computes block outputs for its own objective; a regularizer may want each
block's tensor elsewhere (``Backbone.features(x, tap=...)``: before the pooling, or before
the closing nonlinearity). :func:`for_regularizer` returns the loss's own block outputs
when the tap is ``"output"`` (no extra pass: the default path is unchanged) and one more
pass of the same network at the tap otherwise.

Where the base method trains the synthetic side's network on the synthetic set itself
(MTT's student, BPTT's unrolled model), :func:`trained_weights` says whether the
regularizer's gradient reaches the images through that training as well
(``ctx.feature_network_gradient``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .backbone import tapped_features

#: a network as a function of (inputs, tap) returning its block features
FeatureFn = Callable[[Tensor, str], list[Tensor]]


def for_regularizer(
    tap: str,
    net: nn.Module | FeatureFn,
    x: Tensor,
    outputs: list[Tensor],
    *,
    grad: bool = True,
) -> list[Tensor]:
    """The regularizer's features of ``x``: ``outputs`` (the block outputs the loss already
    computed with ``net`` on ``x``) for the ``"output"`` tap, else ``net``'s features at
    ``tap``. With ``grad`` false (the real side) the features carry no graph whatever the
    tap: the real network is independent of the synthetic set, so no gradient may flow
    back through it (e.g. into BPTT's unroll)."""
    if tap == "output":
        return outputs if grad else [o.detach() for o in outputs]
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        if isinstance(net, nn.Module):
            return tapped_features(net, x, tap)
        return net(x, tap)


def trained_weights(weights: Mapping[str, Tensor], network_gradient: bool
                    ) -> dict[str, Tensor]:
    """The weights a loss computes the synthetic side's features with, for a network it
    trained on the synthetic set: ``weights`` as they are (``network_gradient`` true: the
    regularizer's gradient reaches the images through the training too, the whole unroll)
    or detached (false: the trained network is taken as given, and the gradient reaches
    the images through this one forward pass only)."""
    if network_gradient:
        return dict(weights)
    return {name: w.detach() for name, w in weights.items()}
