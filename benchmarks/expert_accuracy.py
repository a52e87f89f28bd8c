"""Test accuracy of a toolkit expert buffer's networks at every recorded epoch.

Loads each row of each expert (``mim4dd_kit.dd_losses.mtt.buffers.load_expert``) into the
backbone the buffer was trained with (``buffer.json``: the backbone spec; ConvNet only) and
scores it on the data set's test split, in eval mode, as the MTT reference's ``buffer.py``
prints "Test Acc" after every epoch of its own experts (``buffer.py:87-90``). Used to compare the
toolkit's expert training with the reference's at the same settings.

    .venv/bin/python benchmarks/expert_accuracy.py BUFFER_DIR [--experts K]

Prints one JSON object: accuracy (%) per expert and epoch (row 0 = the initialisation),
and the mean and population std over experts per epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.dd_losses.mtt.buffers import expert_layout, load_expert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("buffer", type=Path)
    ap.add_argument("--experts", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    info = json.loads((a.buffer / "buffer.json").read_text())
    spec = dict(info["inputs"]["backbone"])
    if spec.pop("name") != "convnet":
        raise SystemExit(f"{a.buffer}: only ConvNet buffers are supported")
    ds = info["inputs"]["dataset"]["spec"]
    from mim4dd_kit.api import DatasetRef
    from mim4dd_kit.config.registry import default_registry

    data = default_registry().build("datasets", DatasetRef.model_validate(ds)).load()
    x, y = data.test_images, data.test_labels
    net = ConvNet(ConvNet.Params(**spec), channels=data.info.channels,
                  num_classes=data.info.num_classes, image_size=tuple(data.info.image_size))
    net.eval()
    names, shapes = expert_layout(a.buffer, 0)
    indices = sorted(int(p.stem.split("_")[1]) for p in a.buffer.glob("expert_*.safetensors"))
    indices = indices[:a.experts] if a.experts else indices
    acc: dict[int, list[float]] = {}
    for i in indices:
        rows = load_expert(a.buffer, i)
        acc[i] = []
        for row in rows:
            sizes = [int(torch.Size(s).numel()) for s in shapes]
            with torch.no_grad():
                for p, t, s in zip(net.parameters(), row.split(sizes), shapes, strict=True):
                    p.copy_(t.reshape(s))
                pred = torch.cat([net(x[k:k + 1000]).argmax(1) for k in range(0, len(x), 1000)])
            acc[i].append(100.0 * float((pred == y).float().mean()))
    epochs = len(next(iter(acc.values())))
    print(json.dumps({
        "buffer": str(a.buffer), "accuracy": {str(k): v for k, v in acc.items()},
        "mean": [statistics.mean(acc[i][e] for i in acc) for e in range(epochs)],
        "std": [statistics.pstdev(acc[i][e] for i in acc) for e in range(epochs)],
    }))


if __name__ == "__main__":
    main()
