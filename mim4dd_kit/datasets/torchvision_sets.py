"""MNIST, CIFAR-10, CIFAR-100 and SVHN through torchvision, from a local root.

Normalisation constants are those of the DC/DSA/DM reference code
(VICO-UoE/DatasetCondensation ``utils.py``); ``zca: true`` replaces them by ZCA whitening
(MTT's CIFAR preprocessing, see ``zca.py``). Nothing is downloaded unless the recipe says
``download: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..api import RealData
from ..core.errors import DataError
from ._common import build_real_data, content_sha256, data_roots, to_float_nchw
from .params import TorchvisionParams


class _TorchvisionSet:
    name: ClassVar[str]
    tv_class: ClassVar[str]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    flip_ok: ClassVar[bool] = True
    #: the files torchvision reads under the root, for the missing-data message
    layout: ClassVar[str]

    Params = TorchvisionParams

    def __init__(self, params: Any):
        self.params = params

    def _split(self, root: Path, train: bool):
        import torchvision

        cls = getattr(torchvision.datasets, self.tv_class)
        if self.tv_class == "SVHN":
            return cls(str(root), split="train" if train else "test",
                       download=self.params.download)
        return cls(str(root), train=train, download=self.params.download)

    @staticmethod
    def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = ds.labels
        return np.asarray(ds.data), np.asarray(labels)

    def load(self) -> RealData:
        roots = data_roots(self.params.root, download=self.params.download)
        errors = []
        for root in roots:
            try:
                train, test = self._split(root, True), self._split(root, False)
                break
            except (RuntimeError, OSError) as exc:
                errors.append(exc)
        else:
            # torchvision's own message names its download=True argument; say it the
            # recipe's way, and show the files expected
            searched = ", ".join(str(r) for r in roots)
            raise DataError(
                f"{self.name}: data not found (searched {searched}). Expected under the "
                f"dataset's `root:` (or $MDK_DATA): {self.layout}. Point `root:` at the "
                "folder that holds them, or let mdk fetch them where a network is available "
                f"with `download: true` in the recipe's dataset (`dataset: {{name: "
                f"{self.name}, download: true}}`, or --set dataset.download=true)"
                + "".join(f" ({e})" for e in errors[-1:] if "download=True" not in str(e))
            )
        tx, ty = self._arrays(train)
        vx, vy = self._arrays(test)
        if self.tv_class == "SVHN":  # stored (N, C, H, W) already
            tx, vx = tx.transpose(0, 2, 3, 1), vx.transpose(0, 2, 3, 1)
        classes = list(getattr(train, "classes", None) or [str(i) for i in range(10)])
        def to_nchw(a):
            return (to_float_nchw(a).permute(0, 3, 1, 2).contiguous()
                           if a.ndim == 4 else to_float_nchw(a))
        return build_real_data(
            self.name, to_nchw(tx), ty, to_nchw(vx), vy, mean=self.mean, std=self.std,
            class_names=classes, flip_ok=self.flip_ok, sha256=content_sha256(tx, ty),
            zca_eps=self.params.zca_eps if self.params.zca else None,
        )


class MNIST(_TorchvisionSet):
    """MNIST handwritten digits, 28x28 grey, 10 classes (torchvision, local root)."""

    name, tv_class, mean, std, flip_ok = "mnist", "MNIST", (0.1307,), (0.3081,), False
    layout = ("MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
              "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


class CIFAR10(_TorchvisionSet):
    """CIFAR-10, 32x32 colour, 10 classes (torchvision, local root)."""

    name, tv_class = "cifar10", "CIFAR10"
    layout = ("cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and "
              "batches.meta (the extracted cifar-10-python.tar.gz)")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class CIFAR100(_TorchvisionSet):
    """CIFAR-100, 32x32 colour, 100 classes (torchvision, local root)."""

    name, tv_class = "cifar100", "CIFAR100"
    layout = ("cifar-100-python/ with train, test and meta (the extracted "
              "cifar-100-python.tar.gz)")
    mean, std = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)


class SVHN(_TorchvisionSet):
    """SVHN house-number digits, 32x32 colour, 10 classes (torchvision, local root)."""

    name, tv_class, flip_ok = "svhn", "SVHN", False
    layout = "train_32x32.mat and test_32x32.mat"
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
