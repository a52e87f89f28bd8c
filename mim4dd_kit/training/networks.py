"""Networks a DD loss keeps and trains on the synthetic set between image updates (DC's
and CAFE's), saved and restored with the loss's state so runs resume exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..api import Backbone, RunContext


def couples_samples(net: nn.Module) -> bool:
    """True when a module mixes samples of a batch (BatchNorm using batch statistics)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            m.training or not m.track_running_stats
        ):
            return True
    return False


class TrainedNetwork:
    """A network and its SGD optimizer that a DD loss trains between image updates; saves
    and restores both with the loss's state (shared by gradient matching and CAFE)."""

    def __init__(self, ctx: RunContext, *, lr: float, momentum: float):
        self.ctx, self.lr, self.momentum = ctx, lr, momentum
        self.net: Backbone | None = None
        self.opt: torch.optim.Optimizer | None = None

    def _new_net(self) -> None:
        self.net = self.ctx.make_backbone().to(self.ctx.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=self.momentum)

    def _net_state(self) -> dict[str, Any]:
        return {"net": None if self.net is None else self.net.state_dict(),
                "opt": None if self.opt is None else self.opt.state_dict()}

    def _restore_net(self, state: dict[str, Any]) -> None:
        self.net = self.opt = None
        if state.get("net") is not None:
            # building consumes RNG, but the engine restores the RNG state afterwards
            self._new_net()
            assert self.net is not None and self.opt is not None
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])


class PersistentNetwork(TrainedNetwork):
    """A network re-initialised every ``outer_loop`` calls and trained in between.

    ``advance(train)`` is called once per loss call: call n builds a fresh network (and its
    SGD optimizer) when ``n % outer_loop == 0`` and otherwise first runs ``train(net, opt)``
    (the method's inner loop on the detached synthetic set). It returns the network with
    its parameters frozen (``requires_grad`` off), so the engine's backward reaches only the
    images. ``state_dict`` holds the network, its optimizer and the call counter.
    """

    def __init__(self, ctx: RunContext, *, outer_loop: int, lr: float, momentum: float):
        super().__init__(ctx, lr=lr, momentum=momentum)
        self.outer_loop = outer_loop
        self.calls = 0

    @property
    def position(self) -> int:
        """Index of the latest call within its network's life (0: the network is new)."""
        return (self.calls - 1) % self.outer_loop

    def advance(self, train: Callable[[Backbone, torch.optim.Optimizer], None]) -> Backbone:
        if self.net is None or self.calls % self.outer_loop == 0:
            self._new_net()
        else:
            assert self.opt is not None
            self.net.train()
            self.net.requires_grad_(True)
            train(self.net, self.opt)
        self.calls += 1
        assert self.net is not None
        self.net.train()
        self.net.requires_grad_(False)
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, **self._net_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))
        self._restore_net(state)
