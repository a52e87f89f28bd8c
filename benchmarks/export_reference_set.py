"""Export the synthetic sets of the authors' reference code to the toolkit's file format.

VICO-UoE/DatasetCondensation (``main.py``, ``main_DM.py``) saves
``res_<method>_<dataset>_<model>_<ipc>ipc.pt`` holding ``{'data': [[images, labels], ...],
'accs_all_exps': ...}``, one ``[images, labels]`` pair per experiment (``--num_exp``), the
images in the data set's normalised space (the same mean/std as the toolkit's
``fashion_mnist``). Each pair becomes one ``.safetensors`` set written with the toolkit's
public :func:`mim4dd_kit.io.synthetic.save_synthetic`. The provenance says where the set came
from (``source``: repository, commit, script, command, patches, experiment index); it
carries no ``recipe``, because no toolkit recipe made it, so ``mdk evaluate`` needs
``--dataset fashion_mnist``.

    .venv/bin/python benchmarks/export_reference_set.py RESULT.pt --out-dir DIR \\
        --commit SHA --script main_DM.py --command "python main_DM.py ..." \\
        --patch /work/refs/patches/networks_reshape.diff --data-root /work/refs/data

``--format`` names the reference's output (default ``dc``, the above):

- ``mtt``: GeorgeCazenavette/mtt-distillation ``distill.py`` saves ``images_<it>.pt`` and
  ``labels_<it>.pt`` under ``logged_files/<dataset>/<run>/``; RESULT is the images file,
  the labels file beside it is read, and so is ``syn_lr_<it>.pt`` (the learned lr, which
  the copy used here saves beside them), stored as the set's learned ``lr``;
- ``bptt``: princetonvisualai/RememberThePast-DatasetDistillation keeps its images in the
  compressor (``compressors/imgs_embedding_minibatch.py``); the copy used here saves
  ``{'images': (N, C, H, W), 'labels': (N,)}`` at the end of training, which is RESULT.

The data set's content hash is recorded when ``--data-root`` names the folder the
reference read (the torchvision ``FashionMNIST/raw`` layout), so that ``mdk evaluate``
can tell whether the set is scored on the same copy of the data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from mim4dd_kit.io.synthetic import load_synthetic, save_synthetic

REPOSITORIES = {
    "dc": "https://github.com/VICO-UoE/DatasetCondensation",
    "mtt": "https://github.com/GeorgeCazenavette/mtt-distillation",
    "bptt": "https://github.com/princetonvisualai/RememberThePast-DatasetDistillation",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_identity(name: str, root: Path | None) -> dict:
    """The toolkit's description of the data set the reference read (hash when found)."""
    from mim4dd_kit.api import DatasetRef
    from mim4dd_kit.config.registry import default_registry

    spec = {"name": name, **({"root": str(root)} if root else {})}
    data = default_registry().build("datasets", DatasetRef.model_validate(spec)).load()
    info = data.info
    return {**data.identity, "name": info.name, "num_classes": info.num_classes,
            "class_names": list(info.class_names), "channels": info.channels,
            "image_size": list(info.image_size), "mean": list(info.mean),
            "std": list(info.std)}


def read_sets(result: Path, fmt: str) -> list[tuple[torch.Tensor, torch.Tensor, float | None]]:
    """(images, labels, learned lr or None) for each set in a reference output file."""
    saved = torch.load(result, map_location="cpu", weights_only=False)
    if fmt == "dc":
        pairs = saved.get("data") if isinstance(saved, dict) else None
        if not pairs:
            raise SystemExit(f"{result}: no 'data' list of [images, labels] pairs; is this a "
                             "res_*.pt file of main.py / main_DM.py?")
        return [(images, labels, None) for images, labels in pairs]
    if fmt == "mtt":
        if not (isinstance(saved, torch.Tensor) and result.stem.startswith("images_")):
            raise SystemExit(f"{result}: not an images_<it>.pt tensor of distill.py")
        it = result.stem.removeprefix("images_")
        labels_path = result.with_name(f"labels_{it}.pt")
        if not labels_path.exists():
            raise SystemExit(f"{result}: no {labels_path.name} beside it")
        labels = torch.load(labels_path, map_location="cpu")
        lr_path = result.with_name(f"syn_lr_{it}.pt")
        lr = float(torch.load(lr_path, map_location="cpu")) if lr_path.exists() else None
        return [(saved, labels, lr)]
    if not (isinstance(saved, dict) and {"images", "labels"} <= set(saved)):
        raise SystemExit(f"{result}: not a {{'images', 'labels'}} dict saved from the BPTT "
                         "compressor")
    return [(saved["images"], saved["labels"], None)]


def export(result: Path, out_dir: Path, *, commit: str, script: str, command: str,
           patches: list[Path], dataset: str, data_root: Path | None,
           prefix: str | None = None, fmt: str = "dc") -> list[Path]:
    """Write one set per experiment of ``result``; returns the paths written."""
    pairs = read_sets(result, fmt)
    identity = dataset_identity(dataset, data_root)
    stem = prefix or result.stem
    written = []
    for i, (images, labels, lr) in enumerate(pairs):
        meta = {
            "source": {
                "producer": "reference implementation (not mim4dd_kit)",
                "repository": REPOSITORIES[fmt],
                "commit": commit,
                "script": script,
                "command": command,
                "experiment": i,
                "experiments_in_file": len(pairs),
                "result_file": str(result),
                "result_file_sha256": _sha256(result),
                "patches": [{"file": p.name, "sha256": _sha256(p)} for p in patches],
                "exported_by": "benchmarks/export_reference_set.py",
            },
            "dataset": identity,
            "ipc": int(torch.bincount(labels.long()).max()),
        }
        path = out_dir / f"{stem}_exp{i}.safetensors"
        save_synthetic(path, images.float(), labels.long(), lr, meta)
        load_synthetic(path)  # read back: shapes, dtypes and the tensor hash check out
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", type=Path, help="the reference's output file (see --format)")
    ap.add_argument("--format", choices=sorted(REPOSITORIES), default="dc",
                    help="dc: res_*.pt of main.py / main_DM.py; mtt: images_<it>.pt of "
                    "distill.py; bptt: the images/labels dict of the BPTT compressor")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--commit", required=True, help="the reference repository's commit")
    ap.add_argument("--script", required=True, help="the reference script that was run")
    ap.add_argument("--command", required=True, help="the exact command that was run")
    ap.add_argument("--patch", type=Path, action="append", default=[],
                    help="a diff applied to the reference copy (repeatable)")
    ap.add_argument("--dataset", default="fashion_mnist", help="toolkit data set plugin")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="the folder the reference read its data from")
    ap.add_argument("--prefix", default=None, help="file name stem (default: the .pt stem)")
    a = ap.parse_args()
    paths = export(a.result, a.out_dir, commit=a.commit, script=a.script, command=a.command,
                   patches=a.patch, dataset=a.dataset, data_root=a.data_root,
                   prefix=a.prefix, fmt=a.format)
    print(json.dumps([str(p) for p in paths]))


if __name__ == "__main__":
    main()
