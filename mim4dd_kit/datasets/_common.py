"""Helpers shared by the data set plugins: roots, normalisation, identity."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..api import DataInfo, RealData
from ..core.errors import DataError
from .params import ZCAParams as ZCAParams  # defined there, without torch
from .zca import fit_zca


def data_roots(root: Path | None, *subdirs: str, download: bool = False) -> list[Path]:
    """Where to look, in order: the recipe's ``root``, ``$MDK_DATA``, the cache dir.

    A ``root`` the recipe names must exist (unless the set is to be downloaded into it):
    a mistyped path is an error, never a silent fall-back to another copy."""
    bases = []
    if root is not None:
        given = Path(root).expanduser()
        if not download and not given.is_dir():
            raise DataError(f"dataset.root {given} does not exist or is not a folder; fix "
                            "the path, or remove `root:` to search MDK_DATA and the cache")
        bases.append(given)
    if os.environ.get("MDK_DATA"):
        bases.append(Path(os.environ["MDK_DATA"]).expanduser())
    bases.append(Path("~/.cache/mim4dd_kit/data").expanduser())
    out = []
    for b in bases:
        out += [b / s for s in subdirs] + [b]
    return out


def content_sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def to_float_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 images, (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    if isinstance(images, torch.Tensor):
        t = images
    else:
        t = torch.from_numpy(np.array(images))  # a copy: IDX buffers are read-only
    if t.ndim == 3:
        t = t[:, None]
    t = t.float() / 255.0 if not t.is_floating_point() else t.float()
    return t.contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype)[None, :, None, None]
    return (x - m) / s


def _labels(y: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y.long()
    return torch.from_numpy(np.array(y, dtype=np.int64))


def build_real_data(
    name: str,
    train_x: torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    test_x: torch.Tensor,
    test_y: np.ndarray | torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    flip_ok: bool,
    sha256: str,
    zca_eps: float | None = None,
) -> RealData:
    """Normalise float (N, C, H, W) images in [0, 1] and wrap them with their identity.

    With ``zca_eps`` the images are ZCA-whitened instead (transform fitted on the training
    images, applied to both splits, no mean/std step); ``mean``/``std`` are then recorded
    as 0/1 and the identity notes the whitening.
    """
    ty, vy = _labels(train_y), _labels(test_y)
    channels = int(train_x.shape[1])
    if zca_eps is not None:
        zca = fit_zca(train_x, zca_eps)
        train_x, test_x = zca(train_x), zca(test_x)
        mean, std = (0.0,) * channels, (1.0,) * channels
    info = DataInfo(
        name=name,
        num_classes=len(class_names),
        channels=channels,
        image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=tuple(class_names),
        flip_ok=flip_ok,
    )
    identity = {"name": name, "split": "train", "size": int(len(ty)), "sha256": sha256,
                "num_classes": info.num_classes}
    if zca_eps is not None:
        identity["zca"] = {"eps": float(zca_eps), "fitted_on": "train", "covariance": "unbiased"}
    return RealData(info, normalize(train_x, mean, std), ty, normalize(test_x, mean, std), vy,
                    identity)
