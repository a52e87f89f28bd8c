"""The MIM4DD mutual-information lower bound between real and synthetic features.

Source: MIM4DD paper Eq. 2.14-2.16: for layer k,

    I(a_syn^k, a_real^k) >= log(C - 1) + E_P[log h],   h = sigmoid(<g(a_syn), g(a_real)> / tau)

with P the same-class (synthetic, real) pairs. The bound needs a critic g. This evaluator
takes one network (trained on the synthetic set by the ``train_from_scratch`` protocol,
or freshly initialised as DM samples it), fits a fresh critic per block by minimising
Eq. 2.16's NCE loss on real training batches against the whole synthetic set, then
reports the bound (and the NCE loss) on the real test split, which the critics never saw.
See docs/components/mi_estimate.md.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import EvalRequest, EvalResult, Evaluator
from ..core import progress as meter
from ..core.runtime import isolated_rng
from ..training.features import network_features
from ..training.loop import accuracy, train_network
from ..training.mi import mi_lower_bound, nce_loss
from ..training.protocol import backbone_for, build_backbone
from .params import MIEstimateParams

#: offset of the critics' random stream (initial weights, real batches) from the seed
CRITIC_SEED_OFFSET = 1_000_003


def _embed(critic: nn.Module, feats: Tensor, normalize: bool) -> Tensor:
    z = critic(feats)
    return F.normalize(z, dim=1) if normalize else z


class MIEstimate(Evaluator):
    """MIM4DD's MI lower bound (Eq. 2.14) per layer, with critics fitted on held-in data."""

    Params = MIEstimateParams

    def __init__(self, params: MIEstimate.Params):
        self.params = params

    def planned_epochs(self, request: EvalRequest) -> int:
        """Epochs of the one trained network (mim4dd_kit/run/progress.py); 0 untrained."""
        return self.params.epochs if self.params.network == "trained" else 0

    def evaluate(self, request: EvalRequest, registry, progress=None) -> EvalResult:
        p = self.params
        data, dev = request.data, request.device
        num_classes = data.info.num_classes
        backbone = backbone_for(p.backbone, request)
        images = request.images.to(dev)
        labels = request.labels.to(dev)
        start = time.perf_counter()
        lr = None
        # seeded as train_from_scratch's first network
        with isolated_rng(request.seed, dev):
            net = build_backbone(registry, backbone, data, dev)
            if p.network == "trained":
                lr = p.lr_for(request)
                train_network(
                    net, images, labels, epochs=p.epochs, lr=lr, momentum=p.momentum,
                    weight_decay=p.weight_decay, batch_size=p.batch_size,
                    augment=p.build_augmentation(registry, data.info),
                )
        acc = accuracy(net, *data.eval_split(p.split))
        if progress is not None:
            progress(1, 1, acc)
        net.eval()
        for param in net.parameters():
            param.requires_grad_(False)

        syn_feats = network_features(net, images)  # K x (M, p_k)
        with isolated_rng(request.seed + CRITIC_SEED_OFFSET, dev):
            critics = nn.ModuleList(
                registry.build("critics", p.critic, in_features=f.shape[1]) for f in syn_feats
            ).to(dev)
            self._fit(critics, net, syn_feats, labels, request)

        test_mi, test_nce = self._score(critics, net, syn_feats, labels, request)
        ceiling = math.log(max(num_classes - 1, 1))
        result: dict[str, Any] = {
            "layers": list(range(1, len(syn_feats) + 1)),
            "mi_lower_bound": test_mi,
            "mean_mi_lower_bound": sum(test_mi) / len(test_mi),
            # the numbers tables show (mdk evaluate, mdk compare)
            "headline": ["mean_mi_lower_bound", "accuracy"],
            "nce": test_nce,
            "upper_limit": ceiling,
            "upper_limit_note": (
                "log(C-1) + E_P[log h] < log(C-1) because h = sigmoid(s) < 1"
                + (f"; with normalised embeddings s <= 1/tau, so the bound is at most "
                   f"log(C-1) - softplus(-1/tau) = "
                   f"{ceiling - F.softplus(torch.tensor(-1.0 / p.tau)).item():.6g}"
                   if p.normalize else "")
            ),
            "units": "nats",
            "network": p.network,
            "accuracy": acc,
            "lr": lr,
            "epochs": p.epochs if p.network == "trained" else 0,
            "critic": {"name": p.critic.name, **p.critic.params},
            "critic_steps": p.critic_steps,
            "tau": p.tau,
            "split": p.split,
            "test_size": len(data.eval_split(p.split)[1]),
            "backbone": {"name": backbone.name, **backbone.params},
            "seconds": time.perf_counter() - start,
        }
        return EvalResult(result)

    def _scores(self, critics: nn.ModuleList, syn_feats: list[Tensor],
                real_feats: list[Tensor]) -> list[Tensor]:
        """One (M, N) score matrix per layer."""
        norm = self.params.normalize
        return [
            _embed(c, fs, norm) @ _embed(c, fr, norm).T / self.params.tau
            for c, fs, fr in zip(critics, syn_feats, real_feats, strict=True)
        ]

    def _fit(self, critics: nn.ModuleList, net: nn.Module, syn_feats: list[Tensor],
             syn_labels: Tensor, request: EvalRequest) -> None:
        """Minimise Eq. 2.16 (summed over layers; the critics share no weights) with Adam.

        The bound alone would be maximised by scoring every pair high; the NCE loss also
        pushes negatives down, so its optimum is a discriminator of P against Q.
        """
        params = [q for q in critics.parameters() if q.requires_grad]
        if not params or self.params.critic_steps == 0:
            return  # e.g. the identity critic: nothing to fit
        opt = torch.optim.Adam(params, lr=self.params.critic_lr)
        num_classes = request.data.info.num_classes
        critics.train()
        for _ in range(self.params.critic_steps):
            real_x, real_y = request.data.sample_per_class(self.params.batch_real)
            real_feats = network_features(net, real_x)
            positive = syn_labels[:, None] == real_y[None, :]  # (M, N)
            loss = torch.stack([
                nce_loss(s, positive, num_classes)
                for s in self._scores(critics, syn_feats, real_feats)
            ]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            meter.advance()

    @torch.no_grad()
    def _score(self, critics: nn.ModuleList, net: nn.Module, syn_feats: list[Tensor],
               syn_labels: Tensor, request: EvalRequest,
               batch: int = 256) -> tuple[list[float], list[float]]:
        """Bound and NCE loss per layer on the whole real test split."""
        critics.eval()
        norm = self.params.normalize
        test_x, test_y = request.data.eval_split(self.params.split)
        # embed the test split in chunks: wide conv maps of all test images need not fit
        chunks = []
        for i in range(0, len(test_x), batch):
            feats = network_features(net, test_x[i:i + batch])
            chunks.append([_embed(c, f, norm) for c, f in zip(critics, feats, strict=True)])
        real_z = [torch.cat(layer) for layer in zip(*chunks, strict=True)]
        positive = syn_labels[:, None] == test_y[None, :]  # (M, N_test)
        num_classes = request.data.info.num_classes
        mi, nce = [], []
        for c, fs, zr in zip(critics, syn_feats, real_z, strict=True):
            s = _embed(c, fs, norm) @ zr.T / self.params.tau
            mi.append(float(mi_lower_bound(s, positive, num_classes)))
            nce.append(float(nce_loss(s, positive, num_classes)))
        return mi, nce
