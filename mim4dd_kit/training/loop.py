"""The one SGD training loop on a labelled tensor set, and test accuracy.

Every place that trains a network on tensors held in memory goes through
:func:`sgd_epochs` (shuffled passes in minibatches) or :func:`sgd_steps` (random
minibatches): the evaluation protocol (:func:`train_network`), the networks that DC and
CAFE train between image updates, MTT's experts and the coreset baselines' feature
networks. Stacked training of several networks at once is :mod:`.batched`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import progress
from . import chunked
from . import compiled as compiled_mod

Augment = Callable[[Tensor], Tensor]


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch: int | None = None) -> float:
    """Top-1 accuracy in percent of ``net`` (in eval mode) on a labelled tensor set.

    ``batch`` images per forward pass; by default cache-sized chunks on a CPU and 1,024
    images elsewhere (:mod:`mim4dd_kit.training.chunked`).
    """
    net.eval()
    if batch is None and images.device.type == "cpu":
        predicted = chunked.logits(net, images).argmax(1)
        return 100.0 * int((predicted == labels).sum()) / max(len(images), 1)
    batch = batch or 1024
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((net(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return 100.0 * correct / max(len(images), 1)


def sgd_epochs(
    net: nn.Module, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
    epochs: int, batch: int, augment: Augment | None = None,
    on_epoch: Callable[[int], None] | None = None,
    generator: torch.Generator | None = None,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """``epochs`` passes over a shuffled set in minibatches of ``batch`` (last one partial),
    as the reference code's ``DataLoader(shuffle=True)`` + ``epoch('train', ...)``.

    Each epoch draws one permutation from the global torch RNG (or ``generator``);
    ``augment`` (drawing from the same stream: it is passed ``generator`` when one is
    given) is applied to every minibatch. ``on_epoch(epoch)`` runs after each epoch
    (0-based). ``forward`` (default ``net``) computes the logits, e.g. a compiled ``net``.
    """
    forward = net if forward is None else forward
    for epoch in range(epochs):
        order = torch.randperm(len(labels), device=labels.device, generator=generator)
        for idx in order.split(batch):
            x = images[idx]
            if augment is not None:
                x = augment(x) if generator is None else augment(x, generator=generator)
            loss = F.cross_entropy(forward(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)


def sgd_steps(
    net: nn.Module, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
    steps: int, batch: int | None, augment: Augment | None = None,
) -> None:
    """``steps`` SGD steps, each on a random minibatch of ``batch`` images (None: all)."""
    for _ in range(steps):
        x, y = images, labels
        if batch is not None and batch < len(y):
            idx = torch.randperm(len(y), device=y.device)[:batch]
            x, y = x[idx], y[idx]
        if augment is not None:
            x = augment(x)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()


def train_network(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    augment: Augment | None = None,
    lr_decay: bool = True,
    generator: torch.Generator | None = None,
    compiled: bool = False,
) -> nn.Module:
    """The evaluation protocol's training: SGD with momentum and weight decay in train
    mode, lr x0.1 after half the epochs (``lr_decay``); reports every epoch to the
    running evaluation's progress (:func:`mim4dd_kit.core.progress.epochs_done`).

    ``compiled``: forward and backward through ``torch.compile`` (Inductor fuses the
    normalisation, activation and pooling of each block, forward and backward); the
    first epoch, where the compilation happens, holds a process-wide lock so that
    networks trained concurrently on worker threads do not compile at once. Without a
    C++ compiler one warning is printed and the network trains uncompiled."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    forward = compiled_mod.training_forward(net) if compiled else None
    decay_at = epochs // 2 if lr_decay else epochs
    for epoch in range(epochs):
        if epoch == decay_at and epoch > 0:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        net.train()
        lock = compiled_mod.TRAINING_LOCK if forward is not None and epoch == 0 else None
        with lock or contextlib.nullcontext():
            sgd_epochs(net, opt, images, labels, epochs=1, batch=batch_size,
                       augment=augment, generator=generator, forward=forward)
        progress.epochs_done(1)
    return net
