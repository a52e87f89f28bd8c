"""ZCA whitening of image data sets, as MTT preprocesses CIFAR (in torch, no kornia).

MTT (Cazenavette et al., CVPR 2022, ``utils.py``) fits kornia's
``ZCAWhitening(eps=0.1)`` on the training images (``ToTensor`` only: values in [0, 1],
no mean/std normalisation) and applies it to the training and the test images. kornia's
conventions, which this module follows (checked in kornia's ``zca_mean``):

- images are flattened to ``X`` (N, D), ``D = C*H*W``; ``mu`` is the per-feature mean;
- the covariance is unbiased: ``Sigma = (X - mu)^T (X - mu) / (N - 1)``;
- with ``Sigma = U diag(S) U^T``, the transform is ``W = U diag(1 / sqrt(S + eps)) U^T``
  (kornia takes an SVD of the symmetric PSD ``Sigma``, the same as an eigendecomposition);
- whitening is ``(x - mu) W`` (``W`` is symmetric).

The whitened training set then has covariance ``U diag(S / (S + eps)) U^T``: directions
with variance well above ``eps`` are scaled to unit variance, weak ones (noise) are not
amplified. Statistics and the decomposition are computed in float64, in chunks, so CIFAR
(50,000 x 3,072) never needs a float64 copy of the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_CHUNK = 4096


@dataclass(frozen=True)
class ZCA:
    """A fitted ZCA transform: ``mean`` (D,), ``transform`` W (D, D), ``eigenvalues`` S (D,)."""

    mean: Tensor
    transform: Tensor
    eigenvalues: Tensor
    eps: float

    def __call__(self, images: Tensor) -> Tensor:
        """Whiten ``images`` (N, C, H, W) with D = C*H*W; returns float32 of the same shape."""
        flat = images.reshape(len(images), -1)
        if flat.shape[1] != self.mean.numel():
            raise ValueError(
                f"ZCA was fitted on {self.mean.numel()} features per image, got {flat.shape[1]}"
            )
        out = torch.empty(flat.shape, dtype=torch.float32, device=images.device)
        mean = self.mean.to(images.device)
        w = self.transform.to(images.device)
        for start in range(0, len(flat), _CHUNK):
            chunk = flat[start:start + _CHUNK].to(torch.float64) - mean  # (B, D)
            out[start:start + _CHUNK] = (chunk @ w).to(torch.float32)
        return out.reshape(images.shape)


def fit_zca(images: Tensor, eps: float = 0.1) -> ZCA:
    """Fit ZCA on ``images`` (N, C, H, W), N >= 2, as kornia's ``ZCAWhitening(eps)`` does."""
    if eps <= 0:
        raise ValueError(f"ZCA eps must be positive, got {eps}")
    n = len(images)
    if n < 2:
        raise ValueError("ZCA needs at least 2 images to estimate a covariance")
    flat = images.reshape(n, -1)
    mean = torch.zeros(flat.shape[1], dtype=torch.float64, device=images.device)
    for start in range(0, n, _CHUNK):
        mean += flat[start:start + _CHUNK].to(torch.float64).sum(0)
    mean /= n
    cov = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64, device=images.device)
    for start in range(0, n, _CHUNK):
        chunk = flat[start:start + _CHUNK].to(torch.float64) - mean
        cov += chunk.T @ chunk
    cov /= n - 1  # unbiased, kornia's default
    s, u = torch.linalg.eigh(cov)  # ascending; the order does not matter for W
    s = s.clamp(min=0.0)  # round-off can leave tiny negatives on a PSD matrix
    w = (u * torch.rsqrt(s + eps)) @ u.T  # U diag(1/sqrt(S + eps)) U^T
    return ZCA(mean=mean, transform=w, eigenvalues=s, eps=float(eps))
