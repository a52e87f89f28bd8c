"""A user's own labelled images from a safetensors file."""

from __future__ import annotations

import numpy as np
import torch

from ..api import RealData
from ..core.errors import DataError
from ._common import build_real_data, content_sha256, to_float_nchw
from .params import TensorFileParams


class TensorFile:
    """Your own images and labels from a safetensors file (train_/test_ or images/labels)."""

    Params = TensorFileParams

    def __init__(self, params: TensorFile.Params):
        self.params = params

    def _read(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.params.path
        if not path.is_file():
            raise DataError(f"tensor_file: {path} does not exist")
        try:
            return load_file(str(path))
        except Exception as exc:
            raise DataError(f"tensor_file: {path} is not a readable safetensors file: {exc}") \
                from None

    def _check(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        path = self.params.path
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"tensor_file: {path}: {name} images must be (N, C, H, W) or (N, H, W) "
                f"with N labels; got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if y.is_floating_point() or (len(y) and int(y.min()) < 0):
            raise DataError(f"tensor_file: {path}: {name} labels must be integers >= 0")

    def load(self) -> RealData:
        t, path = self._read(), self.params.path
        if {"train_images", "train_labels"} <= t.keys():
            tx, ty = t["train_images"], t["train_labels"]
            self._check("train", tx, ty)
            if {"test_images", "test_labels"} <= t.keys():
                vx, vy = t["test_images"], t["test_labels"]
                self._check("test", vx, vy)
            else:
                tx, ty, vx, vy = self._split(tx, ty)
        elif {"images", "labels"} <= t.keys():
            self._check("", t["images"], t["labels"])
            tx, ty, vx, vy = self._split(t["images"], t["labels"])
        else:
            raise DataError(
                f"tensor_file: {path} needs tensors train_images/train_labels or "
                f"images/labels (found: {', '.join(sorted(t)) or 'none'})"
            )
        tx, vx = to_float_nchw(tx), to_float_nchw(vx)
        num = int(max(int(ty.max()), int(vy.max()) if len(vy) else 0)) + 1
        names = self.params.class_names or [str(i) for i in range(num)]
        if len(names) < num:
            raise DataError(f"tensor_file: {path}: labels go up to {num - 1} but only "
                            f"{len(names)} class_names are given")
        dims = (0, 2, 3)
        mean = self.params.mean or tx.mean(dims).tolist()
        std = self.params.std or tx.std(dims).clamp(min=1e-6).tolist()
        if len(mean) != tx.shape[1] or len(std) != tx.shape[1]:
            raise DataError(f"tensor_file: mean/std need {tx.shape[1]} values (one per channel)")
        return build_real_data(
            "tensor_file", tx, ty.long(), vx, vy.long(), mean=mean, std=std,
            class_names=names, flip_ok=self.params.flip_ok,
            sha256=content_sha256(tx.numpy(), ty.numpy()),
        )

    def _split(self, x: torch.Tensor, y: torch.Tensor):
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y))
        counts = np.bincount(y.numpy())
        strat = y.numpy() if counts[counts > 0].min() >= 2 else None
        tr, te = train_test_split(idx, test_size=self.params.test_fraction,
                                  random_state=self.params.split_seed, stratify=strat)
        tr, te = torch.from_numpy(tr), torch.from_numpy(te)
        return x[tr], y[tr], x[te], y[te]
