"""CKA between a real-trained and a synthetic-trained network (MIM4DD section 3.5, Fig. 5).

Network R is trained on the real training split, network S on the synthetic set by the
evaluation protocol of ``train_from_scratch``; both then see the same probe images from
the real test split, and linear CKA (``mim4dd_kit.training.cka``) compares every block output of R
with every block output of S, the logits counting as a last layer. Rows of the matrix are
R's layers, columns S's. See docs/components/cka.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..api import BackboneRef, EvalRequest, EvalResult, Evaluator
from ..core.errors import MissingExtraError
from ..core.files import atomic_write
from ..core.plots import save_heatmap
from ..core.runtime import isolated_rng
from ..training.cka import choose_method, cka_matrix
from ..training.features import network_features
from ..training.loop import accuracy, train_network
from ..training.protocol import backbone_for, build_backbone
from .params import CKAParams

#: offset between the seeds of the synthetic-trained and the real-trained network
REAL_SEED_OFFSET = 104_729


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..core.errors import ReportError

        raise ReportError(
            f"evaluator cka: cannot create its out_dir {str(out)!r} for cka.json and cka.png "
            f"({exc.strerror or exc}); give a writable directory or out_dir: null"
        ) from None


class CKA(Evaluator):
    """Linear CKA between layers of a real-trained and a synthetic-trained network."""

    Params = CKAParams

    def __init__(self, params: CKA.Params):
        self.params = params

    def planned_epochs(self, request: EvalRequest) -> int:
        """Epochs of the set-trained and the real-trained network (mim4dd_kit/run/progress.py)."""
        return self.params.epochs + self.params.real_epochs

    def evaluate(self, request: EvalRequest, registry, progress=None) -> EvalResult:
        p = self.params
        data, dev = request.data, request.device
        test_x, test_y = data.eval_split(p.split)
        backbone = backbone_for(p.backbone, request)
        augment = p.build_augmentation(registry, data.info)
        syn_lr = p.lr_for(request)
        common = dict(momentum=p.momentum, weight_decay=p.weight_decay, batch_size=p.batch_size)
        if p.out_dir is not None:
            _make_dir(Path(p.out_dir))  # fail before the training, not after it
        start = time.perf_counter()

        # S is seeded as train_from_scratch's first network
        with isolated_rng(request.seed, dev):
            syn_net = build_backbone(registry, backbone, data, dev)
            train_network(syn_net, request.images.to(dev), request.labels.to(dev),
                          epochs=p.epochs, lr=syn_lr, augment=augment, **common)
        syn_acc = accuracy(syn_net, test_x, test_y)
        if progress is not None:
            progress(1, 2, syn_acc)
        with isolated_rng(request.seed + REAL_SEED_OFFSET, dev):
            real_net = build_backbone(registry, backbone, data, dev)
            train_network(real_net, data.train_images, data.train_labels,
                          epochs=p.real_epochs, lr=p.lr, augment=None, **common)
        real_acc = accuracy(real_net, test_x, test_y)
        if progress is not None:
            progress(2, 2, real_acc)

        gen = torch.Generator().manual_seed(request.seed)
        n_probe = min(p.probe, len(test_x))
        idx = torch.randperm(len(test_x), generator=gen)[:n_probe]
        probe = test_x[idx.to(test_x.device)]
        feats_real = network_features(real_net, probe, logits=True)
        feats_syn = network_features(syn_net, probe, logits=True)
        method = choose_method(p.method, n_probe, [f.shape[1] for f in feats_real + feats_syn])
        matrix = cka_matrix(feats_real, feats_syn, method=method).cpu()
        layers = [f"block{k}" for k in range(1, len(feats_real))] + ["logits"]
        result: dict[str, Any] = {
            "matrix": matrix.tolist(),
            "layers": layers,
            "diagonal": matrix.diagonal().tolist(),
            "mean_diagonal": float(matrix.diagonal().mean()),
            # the numbers tables show (mdk evaluate, mdk compare)
            "headline": ["mean_diagonal", "syn_accuracy", "real_accuracy"],
            "real_accuracy": real_acc,
            "syn_accuracy": syn_acc,
            "probe": n_probe,
            "method": method,
            "real_epochs": p.real_epochs,
            "epochs": p.epochs,
            "syn_lr": syn_lr,
            "backbone": {"name": backbone.name, **backbone.params},
            "augmentation": p.augmentation.name if p.augmentation else None,
            "warnings": [],
            "seconds": time.perf_counter() - start,
        }
        if p.out_dir is not None:
            result["files"] = self._write(Path(p.out_dir), matrix, layers, backbone, result)
        return EvalResult(result)

    def _write(self, out: Path, matrix: torch.Tensor, layers: list[str], backbone: BackboneRef,
               result: dict[str, Any]) -> dict[str, str]:
        """cka.json always; cka.png when ``plot`` and the plotting extra is installed."""
        files: dict[str, str] = {}
        if self.params.plot:
            png = out / "cka.png"
            try:
                save_heatmap(
                    matrix.numpy(), png, xlabels=layers, ylabels=layers, vmin=0.0,
                    vmax=1.0, title=f"Linear CKA, {backbone.name}: rows real-trained, "
                    "columns synthetic-trained",
                )
                files["plot"] = str(png)
            except MissingExtraError as exc:
                # the matrix took long to compute: keep it, say why there is no picture
                result["warnings"].append(f"cka.png not drawn: {exc}")
        path = out / "cka.json"
        files["json"] = str(path)
        text = json.dumps({**result, "files": files}, indent=2)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
        return files
