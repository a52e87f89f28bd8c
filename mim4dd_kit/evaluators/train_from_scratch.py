"""The field's evaluation protocol: train fresh networks on the set, test on real data.

Defaults follow the MIM4DD paper (section 3.1) and the DC/DSA/DM reference code: ConvNet,
SGD lr 0.01 (or the lr the method learned) with momentum 0.9 and weight decay 5e-4,
batch 256, lr x0.1 for the second half of training, DSA augmentation on every batch,
300 epochs, 5 networks; accuracy mean and (population) std over networks, in percent.

By default the networks train together, stacked under ``torch.func.vmap``
(:mod:`mim4dd_kit.training.batched`), with the same per-network random streams as when
trained one by one; networks spread over the ranks of a ``torch.distributed`` run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..api import EvalRequest, EvalResult, Evaluator
from ..core import distributed
from ..training.batched import train_networks
from ..training.protocol import backbone_for, build_backbone

# the presets live with the parameters model, which imports no torch
from .params import PROTOCOL_FIELDS, TrainFromScratchParams
from .params import PROTOCOLS as PROTOCOLS


def with_protocol(spec: dict[str, Any], protocol: str) -> dict[str, Any]:
    """A ``train_from_scratch`` spec switched to ``protocol``: the settings a protocol
    decides are dropped so the preset's apply; the rest (backbone, batching) stays."""
    kept = {k: v for k, v in spec.items() if k not in PROTOCOL_FIELDS}
    return {**kept, "protocol": protocol}


class TrainFromScratch(Evaluator):
    """Train fresh networks on the synthetic set and test them on real images (the test
    split, or with ``split: validation`` the held-out training images)."""

    Params = TrainFromScratchParams

    def __init__(self, params: TrainFromScratch.Params):
        self.params = params

    def planned_epochs(self, request: EvalRequest) -> int:
        """Network-epochs this process trains (mim4dd_kit/run/progress.py)."""
        return len(distributed.local_indices(self.params.models)) * self.params.epochs

    def evaluate(self, request: EvalRequest, registry, progress=None) -> EvalResult:
        p = self.params
        backbone = backbone_for(p.backbone, request)
        augment = p.build_augmentation(registry, request.data.info)
        lr = p.lr_for(request)
        images = request.images.to(request.device)
        labels = request.labels.to(request.device)
        test_images, test_labels = request.data.eval_split(p.split)

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
                batched=batched, lr_decay=p.lr_decay,
                workers=p.workers or torch.get_num_threads(), compiled=p.compile,
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
            "protocol": p.protocol,
            "settings": p.resolved(),
            "accuracy_mean": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)),
            "accuracies": accs,
            "models": p.models,
            "epochs": p.epochs,
            "lr": lr,
            "backbone": {"name": backbone.name, **backbone.params},
            "augmentation": p.augmentation.name if p.augmentation else None,
            "split": p.split,
            "test_size": len(test_labels),
            "seconds": time.perf_counter() - start,
            "batched": batched,
        }
        if reason is not None:
            result["reason"] = reason
        return EvalResult(result)
