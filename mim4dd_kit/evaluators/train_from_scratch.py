"""The field's evaluation protocol: train fresh networks on the set, test on real data.

Defaults follow the MIM4DD paper (section 3.1) and the DC/DSA/DM reference code: ConvNet,
SGD lr 0.01 (or the lr the method learned) with momentum 0.9 and weight decay 5e-4,
batch 256, lr x0.1 for the second half of training, DSA augmentation on every batch,
300 epochs, 5 networks; accuracy mean and (population) std over networks, in percent.

By default the networks train together, stacked under ``torch.func.vmap``
(:mod:`.batched`), with the same per-network random streams as when trained one by one;
networks spread over the ranks of a ``torch.distributed`` run.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from .. import chunked, distributed, meter
from ..contracts import AugmentationRef, BackboneRef, EvalRequest, Params
from .batched import train_networks


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int | None = None) -> float:
    """Top-1 accuracy in percent of ``net`` (in eval mode) on a labelled tensor set.

    ``batch`` images per forward pass; by default cache-sized chunks on a CPU and 1,024
    images elsewhere (:mod:`mim4dd_kit.chunked`).
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


def train_network(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    augment=None,
) -> torch.nn.Module:
    """SGD on a (small) labelled tensor set, lr x0.1 after half the epochs."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    decay_at = epochs // 2
    n = len(images)
    for epoch in range(epochs):
        if epoch == decay_at and epoch > 0:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        net.train()
        order = torch.randperm(n, device=images.device)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment(x)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            meter.advance()
    return net


class ProtocolParams(Params):
    """The training settings of the evaluation protocol, shared by every evaluator that
    trains networks on a synthetic set (``train_from_scratch``, ``cross_arch``, ``cka``,
    ``mi_estimate``)."""

    epochs: int = Field(300, ge=1, description="training epochs (paper: 300)")
    lr: float = Field(0.01, gt=0, description="SGD lr when the set has no learned lr")
    use_learned_lr: bool = Field(True, description="use the set's learned lr if any")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1)
    augmentation: AugmentationRef | None = Field(
        default_factory=lambda: AugmentationRef(name="dsa"),
        description="augmentation during training (protocol: DSA); null for none",
    )

    def build_augmentation(self, registry: Any, info: Any) -> Any:
        """The configured augmentation for ``info``'s images, or None."""
        if self.augmentation is None:
            return None
        return registry.build("augmentations", self.augmentation, data_info=info)

    def lr_for(self, request: EvalRequest) -> float:
        """The training lr: the set's learned lr when it has one and it is wanted."""
        return request.lr if (self.use_learned_lr and request.lr is not None) else self.lr


def backbone_for(choice: BackboneRef | None, request: EvalRequest) -> BackboneRef:
    """The evaluator's backbone: its own choice, else the set's, else ``convnet``."""
    return choice or request.backbone or BackboneRef(name="convnet")


def build_backbone(registry: Any, ref: BackboneRef, data: Any, device: torch.device):
    """A fresh ``ref`` network for ``data``'s image shape and classes, on ``device``."""
    info = data.info
    return registry.build(
        "backbones", ref, channels=info.channels, num_classes=info.num_classes,
        image_size=info.image_size,
    ).to(device)


#: ``batched`` of the evaluators that train several networks
Batched = bool | Literal["auto"]
BATCHED_HELP = (
    "train the networks together, stacked under torch.func.vmap (same results as one by "
    "one up to float rounding); auto: on CUDA only, since on a CPU one by one is faster "
    "(docs/performance.md); architectures with running statistics (BatchNorm) or that do "
    "not run under vmap fall back to one by one"
)


class TrainFromScratch:
    """Train fresh networks on the synthetic set and test them on the real test split."""

    class Params(ProtocolParams):
        models: int = Field(5, ge=1, description="networks trained (paper: 5)")
        backbone: BackboneRef | None = Field(
            None, description="network to train; default: the one the set was distilled "
            "with, else convnet"
        )
        batched: Batched = Field("auto", description=BATCHED_HELP)
        batch_models: int | None = Field(
            None, ge=1, description="at most this many networks train together (memory "
            "grows with it); null: all of this process's networks at once",
        )

    def __init__(self, params: TrainFromScratch.Params):
        self.params = params

    def steps(self, request: EvalRequest) -> int:
        """Optimiser steps of this process's networks (:mod:`mim4dd_kit.meter`)."""
        p = self.params
        mine = distributed.local_indices(p.models)
        return len(mine) * p.epochs * meter.batches(len(request.images), p.batch_size)

    def evaluate(self, request: EvalRequest, registry, progress=None) -> dict[str, Any]:
        p = self.params
        backbone = backbone_for(p.backbone, request)
        augment = p.build_augmentation(registry, request.data.info)
        lr = p.lr_for(request)
        images = request.images.to(request.device)
        labels = request.labels.to(request.device)
        test_images, test_labels = request.data.test_images, request.data.test_labels

        def build() -> torch.nn.Module:
            return build_backbone(registry, backbone, request.data, request.device)

        # this process's networks; network i always trains on its own stream seed + 7919 i
        mine = distributed.local_indices(p.models)
        size = p.batch_models or max(len(mine), 1)
        batched = request.device.type == "cuda" if p.batched == "auto" else p.batched
        reason = None
        local: dict[int, float] = {}
        start = time.perf_counter()
        for first in range(0, len(mine), size):
            chunk = mine[first:first + size]
            group = train_networks(
                build, [request.seed + 7919 * i for i in chunk], images, labels,
                device=request.device, epochs=p.epochs, lr=lr, momentum=p.momentum,
                weight_decay=p.weight_decay, batch_size=p.batch_size, augment=augment,
                batched=batched,
            )
            if not group.batched:
                # the architecture decides: later chunks go one by one without a new probe
                batched, reason = False, group.reason
            for i, acc in zip(chunk, group.accuracies(test_images, test_labels), strict=True):
                local[i] = acc
                if progress is not None:
                    progress(len(local), len(mine), acc)
        accs = distributed.gather_indexed(local, p.models)
        result: dict[str, Any] = {
            "accuracy_mean": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)),
            "accuracies": accs,
            "models": p.models,
            "epochs": p.epochs,
            "lr": lr,
            "backbone": {"name": backbone.name, **backbone.params},
            "augmentation": p.augmentation.name if p.augmentation else None,
            "test_size": len(request.data.test_labels),
            "seconds": time.perf_counter() - start,
            "batched": batched,
        }
        if reason is not None:
            result["reason"] = reason
        return result
