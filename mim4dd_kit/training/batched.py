"""Training several evaluation networks of one architecture at once.

The protocol trains N freshly initialised networks on the same synthetic set. Here their
parameters are stacked along a leading network axis (``torch.func.stack_module_state``)
and one ``torch.func.functional_call`` under ``torch.func.vmap`` runs the forward and
backward pass of all N networks per step; ``torch.optim.SGD`` then updates the stacked
leaf tensors. SGD with momentum and weight decay is elementwise, so every network's slice
receives exactly the update it would get alone (see the PyTorch ``torch.func`` model
ensembling tutorial for the stacking pattern).

Each network keeps its own random stream, so network ``i`` sees the initialisation, the
per-epoch batch order and the augmentation draws it sees when trained on its own under
:func:`~mim4dd_kit.core.runtime.isolated_rng` with its seed: the global torch generators (the
CPU one and, on CUDA, the device's) are swapped to network ``i``'s saved state around
each of its draws. That keeps any augmentation or backbone that draws from torch's global
generators exact, without an explicit generator argument.

Networks whose layers update state in place during training (BatchNorm's running
statistics) or whose forward pass does not run under ``vmap`` (random layers such as
dropout, data-dependent control flow) are trained one after another instead; the reason
is recorded. See ``docs/components/train_from_scratch.md``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..core import progress
from ..core.runtime import isolated_rng
from .chunked import one_thread_pool
from .loop import accuracy, train_network

log = logging.getLogger(__name__)

#: test images per forward pass, summed over the networks evaluated together
TEST_BATCH = 1024


def batching_obstacle(net: nn.Module) -> str | None:
    """Why ``net`` cannot be trained stacked (a layer with running statistics), else None."""
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return (
                f"{type(module).__name__} at {name or 'the root'!r} updates running "
                "statistics in place during training, which vmap over stacked networks "
                "does not reproduce"
            )
    return None


class RngStreams:
    """One saved state of torch's global generators per network.

    :meth:`use` swaps network ``i``'s state in for the duration of a block and saves what
    the block left, so draws made in the block continue network ``i``'s own stream. Create
    and use it inside a ``torch.random.fork_rng`` so the caller's stream is untouched.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self._states: list[tuple[Tensor, Tensor | None]] = []

    def __len__(self) -> int:
        return len(self._states)

    def _capture(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.cuda else None
        return torch.get_rng_state(), cuda

    def add(self, seed: int) -> int:
        """Start a stream: seed the global generators (as ``isolated_rng``) and save them."""
        torch.manual_seed(seed)
        self._states.append(self._capture())
        return len(self._states) - 1

    def save(self, i: int) -> None:
        """Record the generators' current state as stream ``i``'s."""
        self._states[i] = self._capture()

    @contextlib.contextmanager
    def use(self, i: int) -> Iterator[None]:
        cpu, cuda = self._states[i]
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        yield
        self.save(i)


class StackedNetworks:
    """N networks of one architecture as stacked tensors with a leading network axis.

    ``params`` and ``buffers`` map the networks' parameter and buffer names to tensors of
    shape ``(N, *shape)``; the parameters are leaf tensors an optimizer can update.
    """

    def __init__(self, nets: Sequence[nn.Module]):
        if not nets:
            raise ValueError("StackedNetworks needs at least one network")
        self.params, self.buffers = stack_module_state(list(nets))
        # a structural copy without storage: functional_call supplies every tensor
        self.base = copy.deepcopy(nets[0]).to("meta")

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def _logits(self, params, buffers, x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _loss(self, params, buffers, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self._logits(params, buffers, x), y)

    def losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-network mean cross-entropy (N,) of batches ``x`` (N, B, ...), ``y`` (N, B)."""
        return vmap(self._loss)(self.params, self.buffers, x, y)

    def logits(self, x: Tensor) -> Tensor:
        """Logits (N, B, K) of every network on one shared batch ``x`` (B, ...)."""
        return vmap(self._logits, in_dims=(0, 0, None))(self.params, self.buffers, x)

    def probe(self, x: Tensor, y: Tensor) -> str | None:
        """Try one stacked training step's forward and backward on ``x`` (B, ...), ``y`` (B).

        Returns why the networks cannot be trained stacked, or None. Nothing is updated.
        """
        n = len(self)
        before = {k: b.clone() for k, b in self.buffers.items()}
        self.base.train()
        try:
            xs = x.unsqueeze(0).expand(n, *x.shape)
            ys = y.unsqueeze(0).expand(n, *y.shape)
            leaves = [p for p in self.params.values() if p.requires_grad]
            torch.autograd.grad(self.losses(xs, ys).sum(), leaves, allow_unused=True)
        except Exception as exc:  # any failure means: train these networks one by one
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"the network does not run under vmap ({type(exc).__name__}: {first})"
        finally:
            changed = [k for k, b in self.buffers.items() if not torch.equal(b, before[k])]
            for k, b in before.items():
                self.buffers[k].copy_(b)
        if changed:
            return f"buffers change during a training step ({', '.join(changed)})"
        return None

    @torch.no_grad()
    def write_back(self, nets: Sequence[nn.Module]) -> None:
        """Copy each network's slice of the stacked tensors into ``nets`` (same order)."""
        for i, net in enumerate(nets):
            for name, t in net.named_parameters():
                t.copy_(self.params[name][i])
            for name, t in net.named_buffers():
                t.copy_(self.buffers[name][i])

    @torch.no_grad()
    def accuracies(self, images: Tensor, labels: Tensor, batch: int = TEST_BATCH) -> list[float]:
        """Top-1 accuracy in percent of every network (eval mode) on a labelled set."""
        self.base.eval()
        step = max(1, batch // len(self))
        correct = torch.zeros(len(self), dtype=torch.long, device=images.device)
        for i in range(0, len(images), step):
            pred = self.logits(images[i:i + step]).argmax(-1)  # (N, B)
            correct += (pred == labels[i:i + step]).sum(1)
        return [100.0 * c / max(len(images), 1) for c in correct.tolist()]


def train_stacked(
    stack: StackedNetworks,
    streams: RngStreams,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    augment: Callable[[Tensor], Tensor] | None = None,
    lr_decay: bool = True,
) -> None:
    """Train the stacked networks in place; network ``i`` draws from stream ``i``.

    Per network this is :func:`~mim4dd_kit.training.loop.train_network`:
    SGD with momentum and weight decay, lr x0.1 after half the epochs (``lr_decay``), a
    fresh permutation of the set every epoch, ``augment`` on every batch.
    """
    n_nets, n = len(stack), len(images)
    opt = torch.optim.SGD(
        list(stack.params.values()), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    decay_at = epochs // 2 if lr_decay else epochs
    for epoch in range(epochs):
        if epoch == decay_at and epoch > 0:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        stack.base.train()
        orders = []
        for i in range(n_nets):
            with streams.use(i):
                orders.append(torch.randperm(n, device=images.device))
        order = torch.stack(orders)  # (N, n)
        for start in range(0, n, batch_size):
            idx = order[:, start:start + batch_size]  # (N, B)
            x, y = images[idx], labels[idx]  # (N, B, C, H, W), (N, B)
            if augment is not None:
                parts = []
                for i in range(n_nets):
                    with streams.use(i):
                        parts.append(augment(x[i]))
                x = torch.stack(parts)
            loss = stack.losses(x, y).sum()  # sum: each network gets its own gradient
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        progress.epochs_done(n_nets)


@dataclass
class TrainedNetworks:
    """Networks trained together (``batched``) or one by one (``reason`` says why)."""

    nets: list[nn.Module]
    batched: bool
    reason: str | None = None
    stack: StackedNetworks | None = field(default=None, repr=False)

    def accuracies(self, images: Tensor, labels: Tensor) -> list[float]:
        """Test accuracy in percent of every network, stacked where they were trained so."""
        if self.stack is not None:
            try:
                return self.stack.accuracies(images, labels)
            except Exception:  # eval mode may differ from the probed training mode
                pass
        return [accuracy(net, images, labels) for net in self.nets]


def train_networks(
    build: Callable[[], nn.Module],
    seeds: Sequence[int],
    images: Tensor,
    labels: Tensor,
    *,
    device: torch.device,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    augment: Callable[[Tensor], Tensor] | None = None,
    batched: bool = True,
    lr_decay: bool = True,
    workers: int = 1,
    compiled: bool = False,
) -> TrainedNetworks:
    """Build and train one network per seed, stacked when the architecture allows it.

    ``build()`` returns a fresh network on ``device``; network ``i`` is built and trained
    on the random stream ``seed_i`` (its initialisation, batch orders and augmentation
    draws), so the result is the same, up to floating-point rounding, whether the
    networks are trained together or one by one. The caller's random stream is
    untouched. ``compiled``: networks trained one by one go through ``torch.compile``
    (:func:`~mim4dd_kit.training.loop.train_network`); stacked training stays eager.
    """
    hyper = dict(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                 batch_size=batch_size, augment=augment, lr_decay=lr_decay)
    reason = None if batched else "batched training is off (batched: false)"
    if batched and seeds:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            streams = RngStreams(device)
            nets = []
            for seed in seeds:
                i = streams.add(seed)
                nets.append(build())
                streams.save(i)
            reason = batching_obstacle(nets[0])
            if reason is None:
                stack = StackedNetworks(nets)
                probe = min(batch_size, len(images))
                reason = stack.probe(images[:probe], labels[:probe])
            if reason is None:
                train_stacked(stack, streams, images, labels, **hyper)
                stack.write_back(nets)
                return TrainedNetworks(nets, True, None, stack)
    hyper["compiled"] = compiled
    if workers > 1 and device.type == "cpu" and len(seeds) > 1:
        nets, why_not = _train_on_workers(build, seeds, images, labels, workers, hyper)
        if nets is not None:
            return TrainedNetworks(nets, False, reason)
        log.debug("networks train one after another: %s", why_not)
    nets = []
    for seed in seeds:
        with isolated_rng(seed, device):
            net = build()
            train_network(net, images, labels, **hyper)
        nets.append(net)
    return TrainedNetworks(nets, False, reason)


def _takes_generator(augment: Callable | None) -> bool:
    if augment is None:
        return True
    try:
        return "generator" in inspect.signature(augment).parameters
    except (TypeError, ValueError):
        return False


def _train_on_workers(build: Callable[[], nn.Module], seeds: Sequence[int], images: Tensor,
                      labels: Tensor, workers: int, hyper: dict[str, Any],
                      ) -> tuple[list[nn.Module] | None, str | None]:
    """Train the networks concurrently on ``workers`` one-thread workers (CPU).

    Network ``i`` is built on its seed's stream as in one-by-one training; that stream's
    state after the build becomes its own ``torch.Generator``, from which its batch orders
    and augmentation draws come, so every network sees exactly the draws it sees when
    trained alone. Each network runs on one thread, so the results do not depend on the
    number of workers, and on a shared node no thread waits at a barrier for a sibling
    whose core was taken (docs/performance.md). Returns ``(None, why)`` when that
    equivalence cannot be kept: an augmentation without a ``generator`` argument, or a
    layer drawing random numbers during training (dropout).
    """
    if not _takes_generator(hyper.get("augment")):
        return None, "the augmentation takes no generator argument"
    nets, generators = [], []
    for seed in seeds:
        with isolated_rng(seed, images.device):
            nets.append(build())
            g = torch.Generator()
            g.set_state(torch.get_rng_state())  # the stream continues past the build
            generators.append(g)
    random = [type(m).__name__ for m in nets[0].modules()
              if isinstance(m, nn.modules.dropout._DropoutNd)]
    if random:
        return None, f"{random[0]} draws from the global generator during training"
    lock = threading.Lock()
    report = progress.current_epochs_callback()

    def counted(networks: int) -> None:
        with lock:
            report(networks)

    def job(i: int) -> None:
        with progress.counting_epochs(counted) if report else contextlib.nullcontext():
            train_network(nets[i], images, labels, generator=generators[i], **hyper)

    for _ in one_thread_pool(workers).map(job, range(len(nets))):  # re-raises errors here
        pass
    return nets, None
