"""Multi-formation: a stored synthetic set that decodes to more, smaller-scale images.

With formation factor ``f`` each stored image (C, H, W) is cut into an ``f x f`` grid of
tiles (row-major; H and W first padded at the bottom/right to multiples of ``f``), and
every tile is resized back to (H, W) by bilinear interpolation (``align_corners=False``).
A stored set of M images therefore trains networks as ``M * f**2`` images; the decoded
images of stored image ``i`` are rows ``i * f**2 ... (i + 1) * f**2 - 1`` and carry its
label. Factor 1 is the identity. (IDC, Kim et al., ICML 2022, "uniform multi-formation";
reference ``Synthesizer.decode_zoom``, Yanqing0327/DREAM ``condense.py:101-121``.)

Bilinear interpolation is linear with weights summing to one, so decoding commutes with
the per-channel normalisation of the images: decoding normalised images equals
normalising decoded pixel images, provided the padding value is the normalised value of
the reference's pixel padding 0.5 (:func:`pad_value`).

Where it is recorded: a run's ``synthetic.formation`` (recipe), and the synthetic-set file's
provenance entry ``mdk.formation`` = ``{"factor": f}`` (:func:`factor_of`). Files without
the entry are factor 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: the reference's padding value in [0, 1] pixel space (``decode_zoom``: value=0.5)
PAD_PIXEL = 0.5


def pad_value(mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel normalised value of the pixel value 0.5, shape (C,)."""
    m = torch.tensor(list(mean), dtype=torch.float32)
    s = torch.tensor(list(std), dtype=torch.float32)
    return (PAD_PIXEL - m) / s


def decoded_count(stored: int, factor: int) -> int:
    """Number of images ``stored`` images decode to."""
    return stored * factor * factor


def decode(
    images: Tensor, labels: Tensor, factor: int, *, pad: Tensor | float = 0.0
) -> tuple[Tensor, Tensor]:
    """Decode (M, C, H, W) stored images and (M,) labels into (M*f^2, C, H, W) and (M*f^2,).

    Vectorised (one reshape and one interpolation for the whole set) and differentiable
    w.r.t. ``images``. ``pad`` is the value (scalar or per-channel (C,)) of the padding
    rows/columns added when H or W is not a multiple of ``factor``.
    """
    if factor < 1:
        raise ValueError(f"formation factor must be >= 1, got {factor}")
    if factor == 1:
        return images, labels
    m, c, h, w = images.shape
    ph, pw = (-h) % factor, (-w) % factor
    x = images
    if ph or pw:
        fill = torch.as_tensor(pad, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        inside = torch.zeros(1, 1, h + ph, w + pw, dtype=torch.bool, device=images.device)
        inside[..., :h, :w] = True
        x = torch.where(inside, F.pad(images, (0, pw, 0, ph)), fill)
    sh, sw = (h + ph) // factor, (w + pw) // factor
    tiles = (x.reshape(m, c, factor, sh, factor, sw)
             .permute(0, 2, 4, 1, 3, 5)
             .reshape(m * factor * factor, c, sh, sw))
    out = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return out, labels.repeat_interleave(factor * factor)


def factor_of(metadata: dict[str, Any] | None) -> int:
    """The formation factor a file's provenance records (1 when absent).

    Raises ``ValueError`` with the key path when the entry is malformed.
    """
    entry = (metadata or {}).get("formation")
    if entry is None:
        return 1
    factor = entry.get("factor") if isinstance(entry, dict) else None
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(
            f"metadata entry 'mdk.formation' must be {{\"factor\": <int >= 1>}}, got {entry!r}"
        )
    return factor


def metadata_entry(factor: int) -> dict[str, int]:
    """The provenance value recorded under ``mdk.formation``."""
    return {"factor": int(factor)}
