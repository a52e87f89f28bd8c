"""Differentiable Siamese Augmentation (Zhao & Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation", ICML 2021).

Reproduces the reference ``DiffAugment`` with ``ParamDiffAug`` in single mode ('S'):
the strategy string (e.g. ``color_crop_cutout_flip_scale_rotate``) is split on ``_``
into op families and one family is drawn uniformly per draw; ``color`` applies
brightness, saturation and contrast in that order, every other family one op.

The work is split in two steps so that it is vectorised over samples:

* :meth:`DSA.draw` draws ``n`` parameter sets at once (:class:`DrawnParams`, one row
  each): a family index and the parameters of *every* op, so the random stream consumed
  does not depend on which family is drawn;
* :meth:`DSA.apply` takes one row per sample and applies each sample's family; samples
  are grouped by family, so the only Python loop is over the families.

``siamese`` draws one row per group (class) and gathers it for every real and synthetic
sample of the group; ``__call__`` draws one row per sample and one family for the call.
See ``docs/components/augmentation.md`` for the constants and the differences from the
reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import DataInfo

# the op families of the reference, with the parameters model that checks them
from .params import AUTO_STRATEGY, AUTO_STRATEGY_NO_FLIP, DSAParams
from .params import KNOWN_FAMILIES as KNOWN_FAMILIES

# columns of the uniform matrix a draw is derived from
_FAMILY, _BRIGHT, _SAT, _CONTRAST, _SHIFT_Y, _SHIFT_X = 0, 1, 2, 3, 4, 5
_CUT_Y, _CUT_X, _FLIP, _SCALE_X, _SCALE_Y, _ANGLE = 6, 7, 8, 9, 10, 11
_NUM_UNIFORMS = 12


# --------------------------------------------------------------------------- pure ops
# Each op is a pure function of a batch x (N, C, H, W) and per-sample parameters with
# leading dimension N; all are differentiable w.r.t. x.


def brightness(x: Tensor, u: Tensor, ratio: float) -> Tensor:
    """``x + (u - 0.5) * ratio`` with ``u`` (N,) in [0, 1)."""
    return x + (u.to(x.dtype)[:, None, None, None] - 0.5) * ratio


def saturation(x: Tensor, u: Tensor, ratio: float) -> Tensor:
    """``(x - m) * (u * ratio) + m``, ``m`` the per-pixel mean over channels (N, 1, H, W)."""
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (u.to(x.dtype)[:, None, None, None] * ratio) + m


def contrast(x: Tensor, u: Tensor, ratio: float) -> Tensor:
    """``(x - m) * (u + ratio) + m``, ``m`` the per-sample mean over C, H, W."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (u.to(x.dtype)[:, None, None, None] + ratio) + m


def translate(x: Tensor, shift: Tensor) -> Tensor:
    """Integer shift with zero fill: ``out[n, :, i, j] = x[n, :, i + dy, j + dx]``.

    ``shift`` is int64 (N, 2) holding ``(dy, dx)``; source pixels outside the image read
    as 0. Exact (a gather), unlike an interpolated affine grid.
    """
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) + shift[:, :1]  # (N, H) source rows
    cols = torch.arange(w, device=x.device) + shift[:, 1:]  # (N, W) source columns
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    return torch.where(valid[:, None], out, 0.0)


def cutout(x: Tensor, center: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero a ``size = (sh, sw)`` rectangle per sample, clipped to the image.

    ``center`` is int64 (N, 2) ``(cy, cx)``; rows ``cy - sh // 2 .. cy - sh // 2 + sh - 1``
    and the matching columns are zeroed in every channel, as in the reference.
    """
    _, _, h, w = x.shape
    top = center[:, :1] - size[0] // 2
    left = center[:, 1:] - size[1] // 2
    r = torch.arange(h, device=x.device)
    c = torch.arange(w, device=x.device)
    in_r = (r >= top) & (r < top + size[0])  # (N, H)
    in_c = (c >= left) & (c < left + size[1])  # (N, W)
    inside = in_r[:, :, None] & in_c[:, None, :]
    return torch.where(inside[:, None], 0.0, x)


def flip(x: Tensor, mask: Tensor) -> Tensor:
    """Horizontal flip (width axis) of the samples where ``mask`` (N,) bool is set."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def affine(x: Tensor, theta: Tensor) -> Tensor:
    """Bilinear resampling with ``theta`` (N, 2, 3): align_corners=True, zero padding."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def scale_theta(s: Tensor) -> Tensor:
    """``[[sx, 0, 0], [0, sy, 0]]`` from ``s`` (N, 2) = ``(sx, sy)`` -> (N, 2, 3)."""
    z = torch.zeros_like(s[:, 0])
    return torch.stack([torch.stack([s[:, 0], z, z], -1), torch.stack([z, s[:, 1], z], -1)], dim=1)


def rotate_theta(angle: Tensor) -> Tensor:
    """``[[cos, -sin, 0], [sin, cos, 0]]`` from ``angle`` (N,) in radians -> (N, 2, 3)."""
    cos, sin, z = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return torch.stack([torch.stack([cos, -sin, z], -1), torch.stack([sin, cos, z], -1)], 1)


# ------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class DrawnParams:
    """One row of augmentation parameters per group or per sample (leading dim R).

    Floating parameters are the uniforms or values the ops take; which of them is used
    depends on ``family``, an index into :attr:`DSA.families`.
    """

    family: Tensor  # (R,) int64
    brightness: Tensor  # (R,) u in [0, 1)
    saturation: Tensor  # (R,) u in [0, 1)
    contrast: Tensor  # (R,) u in [0, 1)
    shift: Tensor  # (R, 2) int64 (dy, dx) in [-s, s]
    center: Tensor  # (R, 2) int64 (cy, cx) cutout centre
    flip: Tensor  # (R,) bool
    scale: Tensor  # (R, 2) (sx, sy) in [1/ratio, ratio]
    angle: Tensor  # (R,) radians

    def __len__(self) -> int:
        return self.family.shape[0]

    def take(self, index: Tensor) -> DrawnParams:
        """Rows ``index`` (int64 (M,)), e.g. per-sample parameters from group ids."""
        return DrawnParams(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> DrawnParams:
        """Move to ``device``; floating parameters become ``dtype`` (the images' dtype)."""
        return DrawnParams(
            *(
                t.to(device, dtype) if t.is_floating_point() else t.to(device)
                for t in (getattr(self, f.name) for f in fields(self))
            )
        )


class DSA:
    """Differentiable siamese augmentation (DSA), single-family mode as in the paper."""

    Params = DSAParams

    def __init__(self, params: DSA.Params, *, data_info: DataInfo):
        self.params = params
        self.num_groups = data_info.num_classes
        if params.strategy == "auto":
            # digits change meaning when mirrored: the DSA authors use no flip there
            self.strategy = AUTO_STRATEGY if data_info.flip_ok else AUTO_STRATEGY_NO_FLIP
        else:
            self.strategy = params.strategy
        # repeated names stay: each position is drawn with equal probability, as in the
        # reference, so 'color_color_crop' draws color two times out of three
        self.families: tuple[str, ...] = tuple(self.strategy.split("_"))

    # ------------------------------------------------------------------ draw / apply

    def draw(
        self,
        n: int,
        image_size: tuple[int, int],
        generator: torch.Generator | None = None,
        shared_family: bool = False,
    ) -> DrawnParams:
        """Draw ``n`` parameter rows for images of ``image_size = (H, W)``.

        Draws happen on the generator's device (the CPU for torch's global RNG), in
        float64 so integer draws by flooring are uniform to 2**-53. ``shared_family`` gives
        every row the family of row 0 (one family per call).
        """
        p, (h, w) = self.params, image_size
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, _NUM_UNIFORMS, generator=generator, dtype=torch.float64, device=device)

        def randint(col: slice | int, low: Tensor | int, high: Tensor | int) -> Tensor:
            # integer uniform in [low, high] from a uniform column (clamp guards u*k == k)
            return (low + (u[:, col] * (high - low + 1)).floor()).long().clamp(max=high)

        k = len(self.families)
        family = randint(_FAMILY, 0, k - 1)
        if shared_family:
            family = family[:1].expand(n).clone()
        sh = torch.tensor([int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)])
        cut = self.cutout_size(image_size)
        # the reference's centre range: randint(0, side + (1 - size % 2))
        hi = torch.tensor([h - cut[0] % 2, w - cut[1] % 2])
        r = p.ratio_scale
        return DrawnParams(
            family=family,
            brightness=u[:, _BRIGHT],
            saturation=u[:, _SAT],
            contrast=u[:, _CONTRAST],
            shift=randint(slice(_SHIFT_Y, _SHIFT_X + 1), -sh.to(device), sh.to(device)),
            center=randint(slice(_CUT_Y, _CUT_X + 1), 0, hi.to(device)),
            flip=u[:, _FLIP] < p.prob_flip,
            scale=u[:, _SCALE_X : _SCALE_Y + 1] * (r - 1.0 / r) + 1.0 / r,
            angle=(u[:, _ANGLE] - 0.5) * 2.0 * math.radians(p.ratio_rotate),
        )

    def cutout_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Side lengths of the cutout square for images of ``(H, W)``."""
        r = self.params.ratio_cutout
        return int(image_size[0] * r + 0.5), int(image_size[1] * r + 0.5)

    def apply_family(self, name: str, x: Tensor, p: DrawnParams) -> Tensor:
        """Apply family ``name`` to ``x`` (N, C, H, W) with per-sample rows ``p`` (N)."""
        q = self.params
        if name == "color":
            x = brightness(x, p.brightness, q.brightness)
            x = saturation(x, p.saturation, q.saturation)
            return contrast(x, p.contrast, q.contrast)
        if name == "crop":
            return translate(x, p.shift)
        if name == "cutout":
            return cutout(x, p.center, self.cutout_size((x.shape[2], x.shape[3])))
        if name == "flip":
            return flip(x, p.flip)
        if name == "scale":
            return affine(x, scale_theta(p.scale))
        if name == "rotate":
            return affine(x, rotate_theta(p.angle))
        raise ValueError(f"unknown augmentation family {name!r}")  # pragma: no cover

    def apply(self, x: Tensor, p: DrawnParams) -> Tensor:
        """Augment ``x`` (N, C, H, W) with per-sample parameters ``p`` (N rows).

        Samples are sorted by family, each family runs once on its samples, and the
        results are put back in the input order (one gather, differentiable).
        """
        n = x.shape[0]
        if n == 0:
            return x
        p = p.to(x.device, x.dtype)
        counts = torch.bincount(p.family, minlength=len(self.families)).tolist()
        order = torch.argsort(p.family, stable=True)
        pieces, start = [], 0
        for f, count in enumerate(counts):
            if count == n:  # a single family: no reordering needed
                return self.apply_family(self.families[f], x, p)
            if count == 0:
                continue
            idx = order[start : start + count]
            start += count
            pieces.append(self.apply_family(self.families[f], x[idx], p.take(idx)))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n, device=order.device)
        return torch.cat(pieces).index_select(0, inverse)

    # --------------------------------------------------------------- the protocol

    def siamese(
        self,
        real: Tensor,
        real_groups: Tensor,
        syn: Tensor,
        syn_groups: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Augment real (N, C, H, W) and synthetic (M, C, H, W) images siamese-wise.

        ``real_groups`` (N,) and ``syn_groups`` (M,) are int64 group ids (the class) in
        ``[0, num_classes)``. One family and one parameter set are drawn per group and
        applied to every real and synthetic sample of that group.
        """
        _check_batch(real, real_groups, "real")
        _check_batch(syn, syn_groups, "syn")
        if real.shape[2:] != syn.shape[2:]:
            raise ValueError(
                f"real and synthetic images differ in size: {tuple(real.shape[2:])} vs "
                f"{tuple(syn.shape[2:])}"
            )
        groups = torch.cat([real_groups, syn_groups.to(real_groups.device)])
        if groups.numel():
            lo, hi = torch.stack(torch.aminmax(groups)).tolist()  # one device sync
            if lo < 0 or hi >= self.num_groups:
                raise ValueError(f"group ids must lie in [0, {self.num_groups}); got [{lo}, {hi}]")
        # a fixed number of rows (not only the groups present) keeps draws reproducible
        p = self.draw(self.num_groups, (real.shape[2], real.shape[3]), generator)
        p_real, p_syn = p.to(real.device, real.dtype), p.to(syn.device, syn.dtype)
        real_out = self.apply(real, p_real.take(real_groups.to(real.device)))
        syn_out = self.apply(syn, p_syn.take(syn_groups.to(syn.device)))
        return real_out, syn_out

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (N, C, H, W): one family for the call, parameters per sample."""
        if x.dim() != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
        p = self.draw(x.shape[0], (x.shape[2], x.shape[3]), generator, shared_family=True)
        return self.apply(x, p)


def _check_batch(x: Tensor, groups: Tensor, side: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected {side} images (N, C, H, W), got shape {tuple(x.shape)}")
    if groups.shape != (x.shape[0],) or groups.is_floating_point():
        raise ValueError(
            f"{side} groups must be integer ids of shape ({x.shape[0]},), got "
            f"{groups.dtype} of shape {tuple(groups.shape)}"
        )
