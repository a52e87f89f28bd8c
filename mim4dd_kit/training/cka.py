"""Linear centred kernel alignment (CKA) between layer activations.

Source: MIM4DD paper section 3.5 (after Kornblith et al., *Similarity of Neural Network
Representations Revisited*, ICML 2019, and Gretton et al.'s HSIC). For n samples with
activations ``X`` (n, p) and ``Y`` (n, q), the Gram matrices ``K = X Xᵀ`` and ``L = Y Yᵀ``
are centred with ``H = I - 11ᵀ/n`` and

    HSIC(K, L) = vec(HKH) · vec(HLH) / (n - 1)²
    CKA(K, L)  = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

The (n - 1)² factors cancel in the ratio. Two equivalent ways to compute it:

- **Gram form** (``method="gram"``): centre the Grams and take Frobenius inner products,
  cost O(n² (p + q)), memory O(n²).
- **Feature form** (``method="feature"``): with column-centred features ``Xc = HX``,
  ``vec(HKH)·vec(HLH) = ||Ycᵀ Xc||_F²`` (since ``HKH = Xc Xcᵀ``), so
  ``CKA = ||Ycᵀ Xc||_F² / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F)``, cost O(n p q), memory O(p q).

``method="auto"`` takes the feature form when both feature sizes are below n (it is then
cheaper and smaller) and the Gram form otherwise (wide conv maps). All arithmetic is in
float64. A side without variance (constant activations) has no defined CKA; we return 0
for it rather than NaN so that results stay valid JSON.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Method = Literal["auto", "gram", "feature"]


def _centred(x: Tensor) -> Tensor:
    """Flatten to (n, p) in float64 and subtract the column means (``H X``)."""
    x = x.flatten(1).to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def _check(feats: list[Tensor], n: int | None = None) -> int:
    for f in feats:
        if f.dim() < 2:
            raise ValueError(f"CKA needs (n, ...) feature tensors, got shape {tuple(f.shape)}")
        if n is None:
            n = f.shape[0]
        if f.shape[0] != n:
            raise ValueError(
                f"CKA compares activations of the same samples: got {f.shape[0]} and {n} rows"
            )
    if n is None or n < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {n}")
    return n


def choose_method(method: Method, n: int, dims: list[int]) -> Literal["gram", "feature"]:
    """Resolve ``auto``: the feature form when every feature size is below n, else Gram."""
    if method not in ("auto", "gram", "feature"):
        raise ValueError(f"unknown CKA method {method!r}; use auto, gram or feature")
    if method == "auto":
        return "feature" if max(dims) < n else "gram"
    return method


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # zero-variance sides give 0 (documented) instead of 0/0
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0)


def _self_norm(xc: Tensor) -> Tensor:
    """``||Xcᵀ Xc||_F = ||Xc Xcᵀ||_F``, computed through the smaller of the two products."""
    n, p = xc.shape
    return torch.linalg.matrix_norm(xc.T @ xc if p <= n else xc @ xc.T)


def linear_cka(x: Tensor, y: Tensor, method: Method = "auto") -> Tensor:
    """Linear CKA between activations ``x`` (n, ...) and ``y`` (n, ...) of the same n samples.

    Conv maps are flattened per sample. Returns a float64 scalar tensor in [0, 1].
    """
    n = _check([x, y])
    xc, yc = _centred(x), _centred(y)
    if choose_method(method, n, [xc.shape[1], yc.shape[1]]) == "feature":
        num = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        den = _self_norm(xc) * _self_norm(yc)
    else:
        k, lg = xc @ xc.T, yc @ yc.T  # centred Grams H K H, H L H
        num = (k * lg).sum()
        den = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(lg)
    return _ratio(num, den)


def cka_matrix(
    feats_a: list[Tensor], feats_b: list[Tensor], method: Method = "auto"
) -> Tensor:
    """CKA of every layer of ``feats_a`` against every layer of ``feats_b``: (La, Lb).

    All tensors hold activations of the same n samples. In the Gram form every layer's
    centred Gram is computed once, scaled to unit Frobenius norm and the whole matrix is
    one product of the stacked ``(La, n²)`` and ``(Lb, n²)`` Grams. In the feature form the
    self-norms are computed once per layer and the cross terms per pair.
    """
    if not feats_a or not feats_b:
        raise ValueError("cka_matrix needs at least one layer on each side")
    n = _check(list(feats_a) + list(feats_b))
    a = [_centred(f) for f in feats_a]
    b = [_centred(f) for f in feats_b]
    if choose_method(method, n, [f.shape[1] for f in a + b]) == "gram":

        def unit_grams(feats: list[Tensor]) -> Tensor:
            grams = torch.stack([(f @ f.T).reshape(-1) for f in feats])  # (L, n²)
            norms = torch.linalg.vector_norm(grams, dim=1, keepdim=True)
            return torch.where(norms > 0, grams / norms.clamp(min=torch.finfo(grams.dtype).tiny),
                               0.0)

        return unit_grams(a) @ unit_grams(b).T
    norm_a = torch.stack([_self_norm(f) for f in a])  # (La,)
    norm_b = torch.stack([_self_norm(f) for f in b])  # (Lb,)
    cross = torch.stack(
        [torch.stack([torch.linalg.matrix_norm(fb.T @ fa) ** 2 for fb in b]) for fa in a]
    )  # (La, Lb)
    return _ratio(cross, norm_a[:, None] * norm_b[None, :])
