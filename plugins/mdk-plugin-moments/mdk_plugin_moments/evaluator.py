"""Nearest-centroid accuracy: how well the synthetic set's class centroids classify the
real test images, with no network trained.

Each class's centroid is the mean of its synthetic images (in the data set's normalised
pixel space); a test image is given the class of the nearest centroid (Euclidean). The
score is a cheap first look at a set, seconds instead of the protocol's minutes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mim4dd_kit.api import EvalRequest, EvalResult, Evaluator, Params


class NearestCentroid(Evaluator):
    """Test accuracy of a nearest-class-centroid classifier built from the set's pixels."""

    class Params(Params):
        split: Literal["test", "validation"] = Field(
            "test", description="real images scored: the test split, or the validation "
            "images the recipe held out"
        )
        batch: int = Field(4096, ge=1, description="test images per distance computation")

    def evaluate(self, request: EvalRequest, registry, progress=None) -> EvalResult:
        p = self.params
        c = request.data.info.num_classes
        images = request.images.to(request.device).flatten(1)
        labels = request.labels.to(request.device)
        counts = torch.bincount(labels, minlength=c)
        centroids = images.new_zeros(c, images.shape[1]).index_add(0, labels, images)
        centroids = centroids / counts.clamp(min=1)[:, None].to(images.dtype)
        present = counts > 0  # a class without images can never be predicted
        test_x, test_y = request.data.eval_split(p.split)
        correct = 0
        for i in range(0, len(test_y), p.batch):
            x = test_x[i:i + p.batch].to(request.device).flatten(1)
            dist = torch.cdist(x, centroids).masked_fill(~present[None, :], float("inf"))
            correct += int((dist.argmin(1) == test_y[i:i + p.batch].to(request.device)).sum())
        accuracy = 100.0 * correct / max(len(test_y), 1)
        return EvalResult({
            "headline": ["nc_accuracy"],
            "nc_accuracy": accuracy,
            "classes_present": int(present.sum()),
            "split": p.split,
            "test_size": len(test_y),
        })
