"""Score a synthetic set (toolkit format) with the DC/DSA/DM reference code's own evaluator.

Imports ``get_dataset``, ``get_network``, ``evaluate_synset`` and ``ParamDiffAug`` from a
local copy of VICO-UoE/DatasetCondensation (``--ref-dir``; never part of this repository)
and runs the reference protocol on the set's images and labels: ``num_eval`` fresh
networks, each trained ``epoch_eval_train`` (+1) epochs by SGD (lr ``lr_net``, momentum
0.9, weight decay 5e-4, x0.1 after half), batch ``batch_train``, DSA augmentation, then
tested on the real test split (``utils.py`` ``evaluate_synset`` / ``epoch``). The reference
seeds each network from the clock (``get_network``), so its runs are not repeatable.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reference_evaluate.py SET.safetensors \\
        --ref-dir /work/refs/DatasetCondensation --data-path /work/refs/data \\
        --model ConvNetW64 --epochs 300 --num-eval 5

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

from mim4dd_kit.io.synthetic import load_synthetic

DATASETS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


def reference_scores(path: Path, *, ref_dir: Path, data_path: Path, model: str, epochs: int,
                     num_eval: int, lr_net: float, batch_train: int,
                     strategy: str) -> dict:
    sys.path.insert(0, str(ref_dir))
    import utils as ref  # the reference's utils.py

    s = load_synthetic(path)
    name = (s.metadata.get("dataset") or {}).get("name", "fashion_mnist")
    if name not in DATASETS:
        raise SystemExit(f"{path}: data set {name!r} is not one this script maps to the "
                         f"reference's names ({', '.join(DATASETS)})")
    channel, im_size, num_classes, _, _, _, _, _, testloader = ref.get_dataset(
        DATASETS[name], str(data_path))
    args = SimpleNamespace(
        device="cpu", lr_net=lr_net, epoch_eval_train=epochs, batch_train=batch_train,
        dsa=strategy not in ("none", "None"), dsa_strategy=strategy,
        dsa_param=ref.ParamDiffAug(), dc_aug_param=None,
    )
    accs = []
    start = time.perf_counter()
    # the reference prints a line per network: keep stdout for the JSON result
    with contextlib.redirect_stdout(sys.stderr):
        for i in range(num_eval):
            net = ref.get_network(model, channel, num_classes, im_size)
            _, _, acc_test = ref.evaluate_synset(i, net, s.images.clone(), s.labels.clone(),
                                                 testloader, args)
            accs.append(100.0 * float(acc_test))
    return {
        "set": str(path),
        "evaluator": "reference utils.evaluate_synset",
        "model": model, "epochs": epochs, "num_eval": num_eval, "lr_net": lr_net,
        "batch_train": batch_train, "dsa_strategy": strategy,
        "accuracies": accs, "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)), "seconds": time.perf_counter() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", type=Path, help="a synthetic set (.safetensors)")
    ap.add_argument("--ref-dir", type=Path, required=True,
                    help="local copy of VICO-UoE/DatasetCondensation")
    ap.add_argument("--data-path", type=Path, required=True,
                    help="torchvision data root the reference reads (FashionMNIST/raw)")
    ap.add_argument("--model", default="ConvNet", help="reference network name, e.g. "
                    "ConvNet (width 128) or ConvNetW64")
    ap.add_argument("--epochs", type=int, default=300, help="epoch_eval_train")
    ap.add_argument("--num-eval", type=int, default=5, help="networks trained")
    ap.add_argument("--lr-net", type=float, default=0.01)
    ap.add_argument("--batch-train", type=int, default=256)
    ap.add_argument("--strategy", default="color_crop_cutout_flip_scale_rotate",
                    help="DSA strategy of the evaluation ('none' for no augmentation)")
    a = ap.parse_args()
    out = reference_scores(a.set, ref_dir=a.ref_dir, data_path=a.data_path, model=a.model,
                           epochs=a.epochs, num_eval=a.num_eval, lr_net=a.lr_net,
                           batch_train=a.batch_train, strategy=a.strategy)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
