"""Export the synthetic sets of the DC/DSA/DM reference code to the toolkit's file format.

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

REPOSITORY = "https://github.com/VICO-UoE/DatasetCondensation"


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


def export(result: Path, out_dir: Path, *, commit: str, script: str, command: str,
           patches: list[Path], dataset: str, data_root: Path | None,
           prefix: str | None = None) -> list[Path]:
    """Write one set per experiment of ``result``; returns the paths written."""
    saved = torch.load(result, map_location="cpu", weights_only=False)
    pairs = saved.get("data") if isinstance(saved, dict) else None
    if not pairs:
        raise SystemExit(f"{result}: no 'data' list of [images, labels] pairs; is this a "
                         "res_*.pt file of main.py / main_DM.py?")
    identity = dataset_identity(dataset, data_root)
    stem = prefix or result.stem
    written = []
    for i, (images, labels) in enumerate(pairs):
        meta = {
            "source": {
                "producer": "reference implementation (not mim4dd_kit)",
                "repository": REPOSITORY,
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
        save_synthetic(path, images.float(), labels.long(), None, meta)
        load_synthetic(path)  # read back: shapes, dtypes and the tensor hash check out
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", type=Path, help="res_*.pt written by main.py / main_DM.py")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--commit", required=True, help="the reference repository's commit")
    ap.add_argument("--script", required=True, help="main.py or main_DM.py")
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
                   prefix=a.prefix)
    print(json.dumps([str(p) for p in paths]))


if __name__ == "__main__":
    main()
