"""Block features of a trained network on real images, for analyses that compare layers
(``cka``, ``mi_estimate``)."""

from __future__ import annotations

from typing import Any

import torch

from . import chunked


def network_features(net: Any, images: torch.Tensor, *, logits: bool = False) -> list[torch.Tensor]:
    """Per-block outputs of ``net`` (eval mode), flattened: K tensors (n, p_k) in float32.

    With ``logits`` the classifier output (n, C) is appended as a (K+1)-th layer. The
    images go through without autograd in cache-sized chunks (:mod:`mim4dd_kit.training.chunked`).
    """
    net.eval()
    feats = chunked.features(net, images)
    out = [f.flatten(1).float() for f in feats]
    if logits:
        with torch.no_grad():
            out.append(net.classify(feats[-1]).float())
    return out
