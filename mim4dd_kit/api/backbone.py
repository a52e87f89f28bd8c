"""The ``backbones`` contract: a network split into blocks whose outputs are features."""

from __future__ import annotations

import inspect

from torch import Tensor, nn

# where ``Backbone.features`` takes each block's tensor (see :class:`Backbone`); defined
# with the parameters models, which must not need torch
from .params import TAPS, Tap

#: modules recognised as a block's closing nonlinearity / pooling in a Sequential block
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.SiLU)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def check_tap(tap: str) -> None:
    """Reject an unknown tap name, listing the known ones."""
    if tap not in TAPS:
        raise ValueError(f"unknown feature tap {tap!r}; known taps: {', '.join(TAPS)}")


class Backbone(nn.Module):
    """A network split into K blocks whose outputs are exposed as features.

    ``features(x)`` returns the output of each block (K tensors, each ``(B, ...)``);
    ``classify(last)`` maps the last block's output to logits ``(B, num_classes)``.
    ``forward`` composes the two. ``embed`` is the flattened last block output, the
    embedding used by distribution matching.

    ``features(x, tap=...)`` chooses where each block's tensor is taken:

    - ``"output"`` (default): the block's output, what the next block receives;
    - ``"pre_pool"``: after the block's closing nonlinearity, before its pooling (the
      output itself where the block has no pooling);
    - ``"pre_activation"``: before the block's closing nonlinearity (for ConvNet: after
      conv and norm).

    The network computed is the same whatever the tap; only the returned tensors differ.

    A subclass that stores its blocks in ``self.blocks`` (an ``nn.ModuleList`` applied in
    order) and its head in ``self.classifier`` (applied to the flattened last block) gets
    ``features`` and ``classify`` for free; others override them. Taps come free too
    where each block is an ``nn.Sequential`` whose last nonlinearity module (ReLU,
    LeakyReLU, Sigmoid, Tanh, GELU, ELU, SiLU) closes it, optionally followed by one
    pooling module; other blocks override :meth:`tap_block`.
    """

    blocks: nn.ModuleList
    classifier: nn.Module

    def features(self, x: Tensor, tap: Tap = "output") -> list[Tensor]:
        out = []
        if tap == "output":  # the default path: block after block, nothing else
            for block in self.blocks:
                x = block(x)
                out.append(x)
            return out
        check_tap(tap)
        for k in range(len(self.blocks)):
            tapped, x = self.tap_block(k, x, tap)
            out.append(tapped)
        return out

    def tap_block(self, k: int, x: Tensor, tap: Tap) -> tuple[Tensor, Tensor]:
        """Run block ``k`` on ``x``; return (the tensor at ``tap``, the block's output).

        The default handles ``nn.Sequential`` blocks laid out as ``[..., act, (pool)]``.
        """
        block = self.blocks[k]
        layers = list(block) if isinstance(block, nn.Sequential) else [block]
        act = max((i for i, m in enumerate(layers) if isinstance(m, _ACTIVATIONS)),
                  default=None)
        if act is None or any(not isinstance(m, _POOLS) for m in layers[act + 1:]):
            raise ValueError(
                f"{type(self).__name__} block {k + 1} is not [..., activation, (pool)]; "
                f"feature tap {tap!r} needs the backbone to override tap_block"
            )
        for m in layers[:act]:
            x = m(x)
        pre_act = x
        x = layers[act](x)
        pre_pool = x
        for m in layers[act + 1:]:
            x = m(x)
        return (pre_act if tap == "pre_activation" else pre_pool if tap == "pre_pool"
                else x), x

    def classify(self, last: Tensor) -> Tensor:
        return self.classifier(last.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x)[-1])

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)[-1].flatten(1)

    def feature_shapes(self) -> list[tuple[int, ...]] | None:
        """Each block's output shape without the batch dimension, or None when the
        backbone does not say. Gradient-free passes on a CPU size their chunks from it
        (mim4dd_kit/training/chunked.py); without it they assume a wide first block."""
        return None


def tapped_features(net: nn.Module, x: Tensor, tap: str = "output") -> list[Tensor]:
    """``net.features(x, tap=tap)`` for any backbone, including one that predates taps.

    The default tap calls ``net.features(x)`` exactly as always, so a third-party backbone
    whose ``features`` takes no ``tap`` keeps working wherever block outputs are used;
    another tap on such a backbone is an error naming it.
    """
    if tap == "output":
        return net.features(x)
    check_tap(tap)
    try:
        params = inspect.signature(net.features).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}
    if "tap" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(
            f"backbone {type(net).__name__} does not support feature taps: its "
            f"features(x) takes no 'tap' argument, so tap {tap!r} is unavailable (subclass "
            f"mim4dd_kit.api.Backbone, or add 'tap' to features; docs/plugins.md)"
        )
    return net.features(x, tap=tap)
