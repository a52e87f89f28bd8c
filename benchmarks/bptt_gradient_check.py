"""One BPTT meta-gradient from the reference code and from the toolkit, on the same inputs.

The side-by-side run of BPTT (``reference_compare_mtt_bptt.sh bptt``) moves IPC-1 images
from real ones only a little in a CPU budget (lr 0.1, gradient clipped at norm 2), so its
accuracies mostly reflect the shared starting images. This script compares the quantity
each iteration is made of: the gradient of the real-data loss with respect to the images
after the unrolled inner training, given the **same** network initialisation, synthetic
images and real batch on both sides.

- reference: ``CompressorBPTT.forward`` of princetonvisualai/RememberThePast-
  DatasetDistillation (``models/compressor_bptt_standard.py``: the unroll by
  ``torch.optim.SGD`` without a graph, then the backward pass by Hessian-vector products),
  with its ``get_network`` replaced by a function that returns a copy of the given network
  (the reference builds a clock-seeded one);
- toolkit: ``mim4dd_kit.training.unroll.unroll`` (plain autograd through the steps, or
  ``--checkpoint`` for the replayed segments the recipes use) and the cross-entropy of the
  trained network on the real batch, differentiated with ``torch.autograd.grad``.

The toolkit's ConvNet receives the reference network's parameters in order (conv weight,
conv bias, norm weight, norm bias per block, classifier), checked by shape. Everything
runs in float64 (``--float32`` for single precision). The network is drawn by the
reference's ``get_network`` (seeded from the clock), so each run checks another one.

    NET_WIDTH=32 .venv/bin/python benchmarks/bptt_gradient_check.py \\
        --ref-dir /work/refs/sidebyside/bptt --images INIT.pt --steps 150

Prints one JSON object: both meta-losses, the gradient norms, their relative difference
and cosine, overall and per image.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.func import functional_call

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.training.unroll import unroll


def real_batch(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` normalised Fashion-MNIST training images of every class."""
    from mim4dd_kit.api import DatasetRef
    from mim4dd_kit.config.registry import default_registry

    data = default_registry().build("datasets", DatasetRef.model_validate(
        {"name": "fashion_mnist"})).load()
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(data.info.num_classes):
        idx = (data.train_labels == c).nonzero().flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        xs.append(data.train_images[pick])
        ys.append(data.train_labels[pick])
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-dir", type=Path, required=True,
                    help="local copy of RememberThePast-DatasetDistillation (patched for CPU)")
    ap.add_argument("--images", type=Path, required=True,
                    help="synthetic images (N, 1, 28, 28), class-major, torch.save'd")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--width", type=int, default=32,
                    help="must equal NET_WIDTH read by the reference copy")
    ap.add_argument("--real-per-class", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=int, default=0,
                    help="the toolkit's checkpoint segment length (0: plain autograd)")
    ap.add_argument("--float32", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    dtype = torch.float32 if a.float32 else torch.float64
    torch.set_default_dtype(dtype)

    sys.path.insert(0, str(a.ref_dir))
    import models.compressor_bptt_standard as ref_bptt
    from compressors.imgs_embedding_minibatch import Net as Compressor
    from utils.model_utils import get_network

    images = torch.load(a.images).to(dtype)
    n, ch, h, w = images.shape
    classes = 10
    ipc = n // classes
    labels = torch.arange(classes).repeat_interleave(ipc)
    real, real_y = real_batch(a.real_per_class, a.seed)
    real = real.to(dtype)

    torch.manual_seed(a.seed)
    ref_net = get_network("ConvNet", ch, classes, (h, w)).to(dtype)
    mdk_net = ConvNet(ConvNet.Params(width=a.width), channels=ch, num_classes=classes,
                      image_size=(h, w)).to(dtype)
    ref_params, mdk_params = list(ref_net.parameters()), list(mdk_net.parameters())
    if [p.shape for p in ref_params] != [p.shape for p in mdk_params]:
        raise SystemExit("the two ConvNets' parameter shapes differ; is NET_WIDTH equal to "
                         "--width?")
    with torch.no_grad():
        for q, p in zip(mdk_params, ref_params, strict=True):
            q.copy_(p)

    # the reference: CompressorBPTT on a compressor holding the images
    comp = Compressor(ipc, ch, (h, w), classes, "cpu", n_per_c=max(ipc, 10))
    with torch.no_grad():
        comp.imgs.weight.copy_(images.reshape(comp.imgs.weight.shape))
    config = SimpleNamespace(
        backbone=SimpleNamespace(name="ConvNet"),
        bptt=SimpleNamespace(inner_steps=a.steps),
        bptt_optim=SimpleNamespace(optimizer="SGD", lr=a.lr, momentum=a.momentum,
                                   weight_decay=0),
    )
    ref_bptt.get_network = lambda *args, **kw: copy.deepcopy(ref_net)
    cb = ref_bptt.CompressorBPTT(comp, config, (ch, (h, w)), None, backbone_ways=classes)
    ref_loss, ref_grad, _ = cb.forward(task_indices=list(range(classes)),
                                       generalization_data=[real, real_y],
                                       intervention_seed=0)
    ref_grad = ref_grad.reshape(n, -1)

    # the toolkit: unroll + real-data loss, autograd to the images
    x = images.clone().requires_grad_(True)
    params = {k: v.detach().clone() for k, v in mdk_net.named_parameters()}
    wfin = unroll(mdk_net, params, {}, x, labels, torch.tensor(a.lr), steps=a.steps,
                  momentum=a.momentum, checkpoint=a.checkpoint)
    mdk_loss = F.cross_entropy(functional_call(mdk_net, wfin, (real,)), real_y)
    (mdk_grad,) = torch.autograd.grad(mdk_loss, x)
    mdk_grad = mdk_grad.reshape(n, -1)

    diff = (mdk_grad - ref_grad).norm() / ref_grad.norm()
    print(json.dumps({
        "dtype": str(dtype), "steps": a.steps, "lr": a.lr, "momentum": a.momentum,
        "width": a.width, "images": str(a.images), "real_per_class": a.real_per_class,
        "checkpoint": a.checkpoint,
        "loss_reference": float(ref_loss), "loss_toolkit": float(mdk_loss),
        "grad_norm_reference": float(ref_grad.norm()),
        "grad_norm_toolkit": float(mdk_grad.norm()),
        "relative_difference": float(diff),
        "cosine": float(F.cosine_similarity(mdk_grad.flatten(), ref_grad.flatten(), dim=0)),
        "cosine_per_image": [round(float(c), 6) for c in
                             F.cosine_similarity(mdk_grad, ref_grad, dim=1)],
    }))


if __name__ == "__main__":
    main()
