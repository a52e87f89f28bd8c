"""Write a toolkit expert buffer in the replay-buffer format of the MTT reference code.

The MTT reference (GeorgeCazenavette/mtt-distillation, ``distill.py``) reads
``<buffer_path>/<dataset>/<model>/replay_buffer_<n>.pt``: a ``torch.save``d list of
experts, each a list over epochs (row 0 = the initialisation) of the network's parameter
tensors in ``net.parameters()`` order (``buffer.py``, where ``timestamps`` is built). The
toolkit's buffer (``mim4dd_kit/buffers.py``) stores each expert as one flattened
(epochs + 1, P) float32 tensor in ``named_parameters`` order with the names and shapes in
the file's metadata. For a ConvNet both orders are conv weight, conv bias, norm weight,
norm bias per block, then the classifier's weight and bias, so the rows split back into
the reference's tensors one to one; the script checks the names against that order.

    .venv/bin/python benchmarks/export_expert_buffer.py BUFFER_DIR \\
        --out /work/refs/sidebyside/buffers/FashionMNIST/ConvNetW32 [--experts K]

Both sides then distil from exactly the same target trajectories, so the distillation
step is compared alone.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from mim4dd_kit.dd_losses.mtt.buffers import expert_layout, load_expert


def reference_trajectories(folder: Path, experts: int | None) -> list[list[list[torch.Tensor]]]:
    """Every expert in ``folder`` as the reference's list (epochs) of lists (parameters)."""
    info = json.loads((folder / "buffer.json").read_text())
    indices = sorted(info["experts"]) if info.get("experts") else sorted(
        int(p.stem.split("_")[1]) for p in folder.glob("expert_*.safetensors"))
    if experts is not None:
        indices = indices[:experts]
    if not indices:
        raise SystemExit(f"{folder}: no finished expert_*.safetensors in this buffer folder")
    names, shapes = expert_layout(folder, indices[0])
    for n in names:
        if not n.startswith(("blocks.", "classifier.")):
            raise SystemExit(f"{folder}: parameter {n!r} is not a ConvNet block or classifier "
                             f"parameter; only ConvNet buffers map onto the reference's order")
    sizes = [math.prod(s) for s in shapes]
    out = []
    for i in indices:
        rows = load_expert(folder, i)  # (epochs + 1, P)
        out.append([[t.reshape(s).clone() for t, s in zip(row.split(sizes), shapes, strict=True)]
                     for row in rows])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("buffer", type=Path, help="a toolkit buffer folder (<cache>/buffers/<key>)")
    ap.add_argument("--out", type=Path, required=True,
                    help="the reference's expert folder: <buffer_path>/<dataset>/<model>")
    ap.add_argument("--experts", type=int, default=None, help="export only the first K")
    a = ap.parse_args()
    traj = reference_trajectories(a.buffer, a.experts)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "replay_buffer_0.pt"
    torch.save(traj, path)
    print(json.dumps({"buffer": str(a.buffer), "out": str(path), "experts": len(traj),
                      "epochs": len(traj[0]) - 1,
                      "parameters": sum(t.numel() for t in traj[0][0])}))


if __name__ == "__main__":
    main()
