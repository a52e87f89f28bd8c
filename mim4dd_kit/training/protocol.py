"""The evaluation protocol's settings and networks, shared by every evaluator that trains
networks on a synthetic set (``train_from_scratch``, ``cross_arch``, ``cka``,
``mi_estimate``) and by third-party evaluators that want the same protocol."""

from __future__ import annotations

from typing import Any

import torch

from ..api import BackboneRef, EvalRequest

# the settings live in a module without torch, for the evaluators' parameters models
from .params import BATCHED_HELP as BATCHED_HELP
from .params import Batched as Batched
from .params import ProtocolParams as ProtocolParams


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
