"""One DC matching loss and its image gradient, from the reference code and from the
toolkit, on the same network, real batch and synthetic images.

    python benchmarks/dc_step_check.py --ref-dir /work/refs/sidebyside/dsa   # float64
    python benchmarks/dc_step_check.py --ref-dir ... --float32 --seed 1

The reference side builds VICO-UoE/DatasetCondensation's own ``networks.ConvNet`` and
calls its own ``utils.match_loss`` (``dis_metric`` 'ours'), class by class as its
``main.py`` DC loop does (the real gradient detached, the synthetic one with
``create_graph``, the class losses summed). The toolkit side runs the ``dc`` loss's
arithmetic (``class_gradients`` of all classes at once and ``match_distance``) on its own
ConvNet holding the same weights. With nothing random left, the two losses and image
gradients must agree up to float rounding; any other difference is a difference in
the computation. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.dd_losses.gradient_matching import class_gradients, match_distance


def reference_loss(ref_net, ref_utils, real, syn) -> torch.Tensor:
    """The reference main.py DC loss of one outer step: sum over classes of match_loss."""
    args = SimpleNamespace(dis_metric="ours", device=str(real.device))
    params = list(ref_net.parameters())
    loss = torch.tensor(0.0, dtype=real.dtype)
    for c in range(real.shape[0]):
        lab_real = torch.full((real.shape[1],), c, dtype=torch.long)
        gw_real = torch.autograd.grad(F.cross_entropy(ref_net(real[c]), lab_real), params)
        gw_real = [g.detach().clone() for g in gw_real]
        lab_syn = torch.full((syn.shape[1],), c, dtype=torch.long)
        gw_syn = torch.autograd.grad(F.cross_entropy(ref_net(syn[c]), lab_syn), params,
                                     create_graph=True)
        loss = loss + ref_utils.match_loss(gw_syn, gw_real, args)
    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-dir", required=True, help="a copy of VICO-UoE/DatasetCondensation")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--float32", action="store_true", help="float32 instead of float64")
    args = ap.parse_args()
    sys.path.insert(0, args.ref_dir)
    import networks as ref_networks  # the reference's modules
    import utils as ref_utils

    dtype = torch.float32 if args.float32 else torch.float64
    torch.manual_seed(args.seed)
    data = default_registry().build("datasets", {"name": "fashion_mnist"}).load()
    c = data.info.num_classes
    gen = torch.Generator().manual_seed(args.seed)
    real, _ = data.sample_per_class(args.batch_real, generator=gen)
    real = real.to(dtype).reshape(c, args.batch_real, *real.shape[1:])
    syn0 = torch.randn(c, args.ipc, *real.shape[2:], generator=gen, dtype=dtype)

    ours = ConvNet(ConvNet.Params(width=args.width, depth=3, norm="instance"),
                   channels=1, num_classes=c, image_size=(28, 28)).to(dtype)
    ref = ref_networks.ConvNet(channel=1, num_classes=c, net_width=args.width, net_depth=3,
                               net_act="relu", net_norm="instancenorm",
                               net_pooling="avgpooling", im_size=(28, 28)).to(dtype)
    ref_params, our_params = list(ref.parameters()), list(ours.parameters())
    if [p.shape for p in ref_params] != [p.shape for p in our_params]:
        raise SystemExit("the two ConvNets' parameters differ in shape")
    with torch.no_grad():
        for r, o in zip(ref_params, our_params, strict=True):
            r.copy_(o)

    syn_ref = syn0.clone().requires_grad_()
    loss_ref = reference_loss(ref, ref_utils, real, syn_ref)
    (grad_ref,) = torch.autograd.grad(loss_ref, syn_ref)

    syn_ours = syn0.clone().requires_grad_()
    labels_real = torch.arange(c).repeat_interleave(args.batch_real).reshape(c, -1)
    labels_syn = torch.arange(c).repeat_interleave(args.ipc).reshape(c, -1)
    with torch.no_grad():
        g_real, _ = class_gradients(ours, real, labels_real)
    g_syn, _ = class_gradients(ours, syn_ours, labels_syn)
    loss_ours = match_distance(g_real, g_syn, "ours").sum()
    (grad_ours,) = torch.autograd.grad(loss_ours, syn_ours)

    diff = (grad_ours - grad_ref).norm() / grad_ref.norm()
    cos = F.cosine_similarity(grad_ours.flatten(1), grad_ref.flatten(1), dim=1)
    print(json.dumps({
        "dtype": str(dtype), "seed": args.seed, "width": args.width, "ipc": args.ipc,
        "batch_real": args.batch_real,
        "loss_reference": float(loss_ref), "loss_toolkit": float(loss_ours),
        "gradient_norm_reference": float(grad_ref.norm()),
        "gradient_norm_toolkit": float(grad_ours.norm()),
        "relative_gradient_difference": float(diff),
        "min_cosine_per_image": float(cos.min()),
    }, indent=1))


if __name__ == "__main__":
    main()
