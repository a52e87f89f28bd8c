"""scikit-learn's bundled 8x8 handwritten digits: tiny, real and always offline."""

from __future__ import annotations

import numpy as np
import torch

from ..api import RealData
from ._common import build_real_data, content_sha256
from .params import DigitsParams


class Digits:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), offline; for quick runs."""

    Params = DigitsParams

    def __init__(self, params: Digits.Params):
        self.params = params

    def load(self) -> RealData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        images = (d.images / 16.0).astype(np.float32)  # values 0..16
        idx = np.arange(len(d.target))
        tr, te = train_test_split(idx, test_size=self.params.test_fraction,
                                  random_state=self.params.split_seed, stratify=d.target)
        tx = torch.from_numpy(images[tr])[:, None]
        vx = torch.from_numpy(images[te])[:, None]
        mean, std = (float(tx.mean()),), (float(tx.std()),)
        return build_real_data(
            "digits", tx, d.target[tr], vx, d.target[te], mean=mean, std=std,
            class_names=[str(i) for i in range(10)], flip_ok=False,
            sha256=content_sha256(images[tr], d.target[tr]),
            zca_eps=self.params.zca_eps if self.params.zca else None,
        )
