"""Score a synthetic set (toolkit format) with the MTT or the BPTT reference code's evaluator.

``--ref mtt``: imports ``get_dataset``, ``get_network``, ``evaluate_synset`` and
``ParamDiffAug`` from a local copy of GeorgeCazenavette/mtt-distillation (``--ref-dir``)
and runs what ``distill.py`` does at an evaluation point: ``num_eval`` fresh networks,
each trained ``epoch_eval_train`` (+1) epochs by SGD at the set's learned lr
(``args.lr_net = syn_lr.item()``; ``--lr`` when the set has none), momentum 0.9, weight
decay 5e-4, x0.1 after half, batch 256, DSA on every batch, then tested on the real test
split (``utils.py`` ``evaluate_synset`` / ``epoch``).

``--ref bptt``: imports ``Evaluator`` (``tools/evaluator.py``), the image compressor
(``compressors/imgs_embedding_minibatch.py``) and ``get_dataset`` from a local copy of
princetonvisualai/RememberThePast-DatasetDistillation, puts the set's images into the
compressor and calls ``Evaluator.evaluate`` as ``runners/sgld_runner_standard.py`` does:
``num_eval`` networks, each trained ``train_epoch`` epochs by SGD lr 0.01 momentum 0.9
(``backbone_optim`` of ``configs/compressors_bptt_interventions.yml``; ``get_optimizer``
passes no weight decay), no schedule, batch 640, no augmentation (``tools/trainer.py``).
The network width comes from the ``NET_WIDTH`` environment variable read by the patched
``utils/model_utils.py`` of the copy (default 128).

Neither copy is part of this repository. Both references seed each network from the clock
(``get_network``), so their runs are not repeatable.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reference_evaluate_mtt_bptt.py SET \\
        --ref mtt --ref-dir /work/refs/sidebyside/mtt --data-path /work/refs/data \\
        --model ConvNetW32 --epochs 1000 --num-eval 5

Prints one JSON object: accuracies (%), their mean and population std, the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mim4dd_kit.io.synthetic import load_synthetic

DATASETS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


def _dataset_name(s, path: Path) -> str:
    name = (s.metadata.get("dataset") or {}).get("name", "fashion_mnist")
    if name not in DATASETS:
        raise SystemExit(f"{path}: data set {name!r} is not one this script maps to the "
                         f"reference's names ({', '.join(DATASETS)})")
    return DATASETS[name]


def mtt_scores(s, name: str, *, ref_dir: Path, data_path: Path, model: str, epochs: int,
               num_eval: int, lr: float, strategy: str) -> tuple[list[float], dict]:
    sys.path.insert(0, str(ref_dir))
    import utils as ref  # the MTT reference's utils.py

    out = ref.get_dataset(name, str(data_path), 256, args=SimpleNamespace(zca=False))
    channel, im_size, num_classes, testloader = out[0], out[1], out[2], out[8]
    lr_net = s.lr if s.lr is not None else lr
    args = SimpleNamespace(
        device="cpu", lr_net=lr_net, epoch_eval_train=epochs, batch_train=256, dsa=True,
        dsa_strategy=strategy, dsa_param=ref.ParamDiffAug(), dc_aug_param=None,
        dataset=name, im_size=im_size,
    )
    accs = []
    for i in range(num_eval):
        net = ref.get_network(model, channel, num_classes, im_size)
        _, _, acc = ref.evaluate_synset(i, net, s.images.clone(), s.labels.clone(),
                                        testloader, args)
        accs.append(100.0 * float(acc))
    return accs, {"evaluator": "mtt-distillation utils.evaluate_synset", "model": model,
                  "epochs": epochs, "lr_net": lr_net, "batch_train": 256,
                  "dsa_strategy": strategy}


def bptt_scores(s, name: str, *, ref_dir: Path, data_path: Path, model: str, epochs: int,
                num_eval: int) -> tuple[list[float], dict]:
    sys.path.insert(0, str(ref_dir))
    from compressors.imgs_embedding_minibatch import Net
    from tools.evaluator import Evaluator
    from utils.data_utils import get_dataset

    channel, im_size, _, test_n_classes, _, dst_test = get_dataset(name, str(data_path))
    test_loader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False,
                                              num_workers=0)
    counts = torch.bincount(s.labels, minlength=test_n_classes)
    if not bool((counts == counts[0]).all()) or not bool(
            (s.labels == torch.arange(test_n_classes).repeat_interleave(counts[0])).all()):
        raise SystemExit("the BPTT compressor holds class-major sets with the same number "
                         "of images per class; this set is not one")
    ipc = int(counts[0])
    comp = Net(ipc, channel, im_size, test_n_classes, "cpu", n_per_c=ipc)
    with torch.no_grad():
        comp.imgs.weight.copy_(s.images.reshape(comp.imgs.weight.shape))
    config = SimpleNamespace(
        device="cpu",
        backbone_optim=SimpleNamespace(optimizer="SGD", lr=0.01, momentum=0.9,
                                       weight_decay=0),
    )
    ev = Evaluator(config, (channel, test_n_classes, im_size), [model],
                   test_loader=test_loader, rank="cpu")
    res = ev.evaluate([comp], current_iter=0, train_epoch=epochs, num_eval=num_eval,
                      intervention=[None, 0])
    accs = [100.0 * float(a) for a in res[model]]
    return accs, {"evaluator": "RememberThePast tools/evaluator.py Evaluator.evaluate",
                  "model": model, "epochs": epochs, "lr": 0.01, "momentum": 0.9,
                  "weight_decay": 0.0, "batch": 640, "augmentation": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", type=Path, help="a synthetic set (.safetensors)")
    ap.add_argument("--ref", choices=("mtt", "bptt"), required=True)
    ap.add_argument("--ref-dir", type=Path, required=True, help="local copy of the reference")
    ap.add_argument("--data-path", type=Path, required=True,
                    help="torchvision data root the reference reads (FashionMNIST/raw)")
    ap.add_argument("--model", default="ConvNet", help="reference network name")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs (default: mtt 1000, bptt 300)")
    ap.add_argument("--num-eval", type=int, default=None,
                    help="networks (default: mtt 5, bptt 10)")
    ap.add_argument("--lr", type=float, default=0.01,
                    help="mtt: SGD lr when the set has no learned lr")
    ap.add_argument("--dsa-strategy", default="color_crop_cutout_flip_scale_rotate")
    a = ap.parse_args()
    torch.set_num_threads(1)
    s = load_synthetic(a.set)
    name = _dataset_name(s, a.set)
    start = time.perf_counter()
    # the references print per network: keep stdout for the JSON result
    with contextlib.redirect_stdout(sys.stderr):
        if a.ref == "mtt":
            accs, info = mtt_scores(s, name, ref_dir=a.ref_dir, data_path=a.data_path,
                                    model=a.model, epochs=a.epochs or 1000,
                                    num_eval=a.num_eval or 5, lr=a.lr,
                                    strategy=a.dsa_strategy)
        else:
            accs, info = bptt_scores(s, name, ref_dir=a.ref_dir, data_path=a.data_path,
                                     model=a.model, epochs=a.epochs or 300,
                                     num_eval=a.num_eval or 10)
    print(json.dumps({"set": str(a.set), **info, "num_eval": len(accs), "accuracies": accs,
                      "accuracy_mean": float(np.mean(accs)),
                      "accuracy_std": float(np.std(accs)),
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
