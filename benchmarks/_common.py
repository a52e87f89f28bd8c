"""Pieces the benchmark scripts share (imported as ``_common`` from their own folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sync(device) -> None:
    """Wait for queued CUDA work, so a timer reads the work's end; nothing on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def mtt_subset(dataset: str, per_class: int, folder: Path) -> dict[str, Any]:
    """The first ``per_class`` training images of every class (and 1,000 test images) of
    ``dataset``, un-normalised, as a ``tensor_file`` in ``folder``: MTT's expert then
    trains fast (a step costs the same whatever the expert learned). Returns the recipe's
    ``dataset`` entry for it."""
    import torch
    from safetensors.torch import save_file

    from mim4dd_kit.api import class_table
    from mim4dd_kit.config.registry import default_registry

    data = default_registry().build("datasets", {"name": dataset}).load()
    rows = class_table(data.train_labels, data.info.num_classes)[:, :per_class].reshape(-1)
    rows = rows[rows >= 0]  # classes smaller than per_class are padded with -1
    mean = torch.tensor(data.info.mean)[None, :, None, None]
    std = torch.tensor(data.info.std)[None, :, None, None]
    test = slice(0, min(1000, len(data.test_labels)))
    path = Path(folder) / "subset.safetensors"
    save_file({"train_images": (data.train_images[rows] * std + mean).contiguous(),
               "train_labels": data.train_labels[rows].contiguous(),
               "test_images": (data.test_images[test] * std + mean).contiguous(),
               "test_labels": data.test_labels[test].contiguous()}, str(path))
    return {"name": "tensor_file", "path": str(path), "mean": list(data.info.mean),
            "std": list(data.info.std), "flip_ok": data.info.flip_ok}
