"""Pictures of runs and sets: loss curves, image grids and annotated heat maps.

The drawings follow the MIM4DD paper's figures: Fig. 4 (the DD loss per iteration, with and
without the NCE regularizer) for :func:`save_loss_curves`, Fig. 5 (a CKA map between the
layers of a real-trained and a synthetic-trained network) for :func:`save_heatmap`, and
the usual "one row per class" view of a synthetic set for :func:`save_image_grid`.

matplotlib is the optional ``plot`` extra. It is imported lazily, inside the drawing
functions, and only its object-oriented API is used (``matplotlib.figure.Figure`` renders
through the Agg canvas), so no display is needed and the global pyplot backend of a
notebook is never changed. Without matplotlib every drawing function raises
:class:`MissingExtraError`; :func:`grid_array` and :func:`read_history` are pure and work
without it. Every PNG is written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MissingExtraError, ReportError
from .files import atomic_write

PLOT_EXTRA_HINT = "install the plot extra: pip install 'mim4dd_kit[plot]'"


def _figure_class() -> type:
    """matplotlib's ``Figure`` class, or a clear error when the extra is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(
            f"drawing pictures needs matplotlib, which is not installed; {PLOT_EXTRA_HINT}"
        ) from None
    return Figure


def have_matplotlib() -> bool:
    """Whether the drawing functions can run here."""
    try:
        _figure_class()
    except MissingExtraError:
        return False
    return True


def _save_png(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi,
                                               bbox_inches="tight"))
    return path


# -- heat map ---------------------------------------------------------------------------


def save_heatmap(
    matrix: Any,
    path: str | Path,
    *,
    xlabels: list[str],
    ylabels: list[str],
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    xname: str = "",
    yname: str = "",
) -> Path:
    """Draw ``matrix`` (R, C) as an annotated heat map with a colour bar (paper Fig. 5).

    Rows are labelled by ``ylabels`` (R names), columns by ``xlabels`` (C names);
    ``xname``/``yname`` title the axes. Cells are annotated with their value (two
    decimals) when the matrix has at most 400 cells. Returns ``path``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ReportError(f"a heat map needs a 2-D matrix, got shape {m.shape}")
    if len(ylabels) != m.shape[0] or len(xlabels) != m.shape[1]:
        raise ReportError(
            f"a {m.shape[0]}x{m.shape[1]} heat map needs {m.shape[0]} row labels and "
            f"{m.shape[1]} column labels, got {len(ylabels)} and {len(xlabels)}"
        )
    figure = _figure_class()
    rows, cols = m.shape
    fig = figure(figsize=(max(4.0, 0.7 * cols + 2.5), max(3.0, 0.55 * rows + 1.5)))
    ax = fig.add_subplot()
    finite = m[np.isfinite(m)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(cols), labels=[str(x) for x in xlabels], rotation=45, ha="right")
    ax.set_yticks(range(rows), labels=[str(y) for y in ylabels])
    if rows * cols <= 400:
        for (i, j), value in np.ndenumerate(m):
            if not math.isfinite(value):
                continue
            # dark text on the light (high) end of viridis, light text on the dark end
            colour = "black" if (value - lo) / (hi - lo) > 0.6 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour,
                    fontsize=8)
    if xname:
        ax.set_xlabel(xname)
    if yname:
        ax.set_ylabel(yname)
    if title:
        ax.set_title(title)
    return _save_png(fig, path)


# -- loss curves ------------------------------------------------------------------------


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Read a run's ``losses.jsonl``: one JSON object per line (blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"loss log {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read loss log {path}: {exc}") from None
    history = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(
                f"{path}:{number}: malformed line in the loss log ({exc.msg}); each line "
                "must be one JSON object such as {\"iteration\": 1, \"loss\": 0.5}"
            ) from None
        if not isinstance(entry, dict):
            raise ReportError(
                f"{path}:{number}: expected a JSON object, got {type(entry).__name__}"
            )
        history.append(entry)
    return history


def _series(history: list[dict[str, Any]], key: str) -> np.ndarray:
    out = np.full(len(history), np.nan)
    for i, h in enumerate(history):
        value = h.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[i] = float(value)
    return out


def _nce_keys(history: list[dict[str, Any]]) -> list[str]:
    keys = {k for h in history for k in h if k.startswith("nce") and k[3:].isdigit()}
    return sorted(keys, key=lambda k: int(k[3:]))


def save_loss_curves(history: list[dict[str, Any]], path: str | Path, *,
                     title: str = "") -> Path:
    """Draw a run's losses per iteration (paper Fig. 4) and return ``path``.

    Panels, top to bottom, each only when the log has it: the base DD loss ``loss_dd``; the
    weighted regularizer ``loss_reg`` (own panel: the scales differ); the per-layer NCE
    terms ``nce1..nceK``; the ratio of the regularizer's image-gradient norm to the DD
    one ``grad_ratio`` (log scale; logged on MIM4DD's diagnostic iterations); the learned
    lr ``lr``. ``history`` is the list
    :func:`read_history` returns; entries without ``iteration`` are numbered in order.
    """
    if not history:
        raise ReportError("the loss log is empty: there is nothing to draw")
    x = np.array([float(h.get("iteration", i + 1)) for i, h in enumerate(history)])
    panels: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    base_key = "loss_dd" if any("loss_dd" in h for h in history) else "loss"
    panels.append(("$L_{DD}$" if base_key == "loss_dd" else "loss",
                   [(base_key, _series(history, base_key))]))
    if any("loss_reg" in h for h in history):
        panels.append(("regularizer", [("loss_reg", _series(history, "loss_reg"))]))
    nce = _nce_keys(history)
    if nce:
        panels.append(("$L_{NCE}$ per layer", [(k, _series(history, k)) for k in nce]))
    if any("grad_ratio" in h for h in history):
        panels.append(("|grad reg| / |grad DD|", [("grad_ratio", _series(history,
                                                                          "grad_ratio"))]))
    if any("lr" in h for h in history):
        panels.append(("learned lr", [("lr", _series(history, "lr"))]))
    figure = _figure_class()
    fig = figure(figsize=(7.0, 2.4 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, lines) in zip(axes, panels, strict=True):
        for name, y in lines:
            seen = ~np.isnan(y)  # sparse series (diagnostics) are drawn through their points
            ax.plot(x[seen], y[seen], label=name, linewidth=1.2,
                    marker="." if seen.sum() < len(y) else None)
            if name == "grad_ratio" and (y[seen] > 0).any():
                ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if len(lines) > 1 or lines[0][0] != base_key:
            ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("iteration")
    if title:
        axes[0].set_title(title)
    return _save_png(fig, path)


# -- image grids ------------------------------------------------------------------------


def _as_channel_tuple(values: Sequence[float] | float, channels: int, what: str) -> torch.Tensor:
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ReportError(
            f"{what} has {len(vals)} value(s) but the images have {channels} channel(s)"
        )
    return torch.tensor(vals, dtype=torch.float32)


def grid_layout(labels: torch.Tensor, ncols: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int], int]:
    """Where each image goes in the class-per-row grid.

    Returns (row, col) of every image (in input order), the classes present (ascending),
    the first grid row of each of those classes, and the number of columns. A class with
    more images than ``ncols`` continues on the next row(s).
    """
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or labels.numel() == 0:
        raise ReportError("an image grid needs a non-empty 1-D label tensor")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    cols = int(ncols) if ncols else int(counts.max())
    if cols < 1:
        raise ReportError(f"ncols must be at least 1, got {ncols}")
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - starts[inverse[order]]
    rows_per_class = (counts + cols - 1) // cols
    first_row = torch.cumsum(rows_per_class, 0) - rows_per_class
    row = first_row[inverse] + rank // cols
    col = rank % cols
    return row, col, classes.tolist(), first_row.tolist(), cols


def grid_array(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    *,
    ncols: int | None = None,
    pad: int = 1,
    rescale: bool = False,
) -> np.ndarray:
    """The grid picture as an array (H_total, W_total, C) with values in [0, 1].

    ``images`` (N, C, H, W) are in the data set's normalised space; each is de-normalised
    per channel (``x * std + mean``) and clipped to [0, 1]. With ``rescale`` each image is
    instead stretched to its own [min, max] (for whitened sets, where mean/std do not
    invert the preprocessing). One row per class in ascending class order, the class's
    images in their order; ``pad`` pixels of white between cells and in empty cells.
    """
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if images.ndim != 4:
        raise ReportError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.shape != (n,):
        raise ReportError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if rescale:
        flat = images.flatten(1)
        lo = flat.min(1).values[:, None, None, None]
        hi = flat.max(1).values[:, None, None, None]
        pixels = (images - lo) / (hi - lo).clamp_min(1e-12)
    else:
        m = _as_channel_tuple(mean, c, "mean")[None, :, None, None]
        s = _as_channel_tuple(std, c, "std")[None, :, None, None]
        pixels = images * s + m
    pixels = pixels.clamp(0.0, 1.0)
    row, col, _, _, cols = grid_layout(labels, ncols)
    from torchvision.utils import make_grid  # here: torchvision is slow to import

    rows = int(row.max()) + 1
    cells = torch.ones(rows * cols, c, h, w)  # empty cells stay white
    cells[row * cols + col] = pixels
    grid = make_grid(cells, nrow=cols, padding=pad, pad_value=1.0)
    if pad:  # make_grid also pads the outer border; the picture has padding between only
        grid = grid[:, pad:-pad, pad:-pad]
    # make_grid repeats a single channel three times; keep the images' channels
    return grid[:c].permute(1, 2, 0).contiguous().numpy()


def save_image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    *,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    class_names: Sequence[str] | None = None,
    ncols: int | None = None,
    rescale: bool = False,
    title: str = "",
) -> Path:
    """Draw a set as one row (or block of rows) per class, classes named; returns ``path``.

    The picture is :func:`grid_array` (de-normalised with the data set's per-channel
    ``mean``/``std``, clipped to [0, 1]; grey for 1 channel); the class names label the
    rows (default: the class ids).
    """
    pad = 1
    grid = grid_array(images, labels, mean, std, ncols=ncols, pad=pad, rescale=rescale)
    _, _, classes, first_rows, cols = grid_layout(torch.as_tensor(labels).cpu(), ncols)
    h = int(torch.as_tensor(images).shape[2])
    counts = torch.bincount(torch.as_tensor(labels).long().cpu())
    figure = _figure_class()
    height_px, width_px = grid.shape[:2]
    # inches per grid pixel: at least 3 screen pixels each at 100 dpi (more for tiny
    # grids), at most 14 x 24 inches; large grids get the dpi to keep every pixel
    scale = min(14.0 / width_px, 24.0 / height_px,
                max(0.03, 5.0 / max(width_px, height_px)))
    dpi = max(100, math.ceil(1.0 / scale))
    fig = figure(figsize=(max(3.0, width_px * scale + 1.2), max(1.5, height_px * scale + 0.4)))
    ax = fig.add_subplot()
    if grid.shape[2] == 1:
        ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ticks, names = [], []
    for cls, first in zip(classes, first_rows, strict=True):
        n_rows = (int(counts[cls]) + cols - 1) // cols
        ticks.append((first + n_rows / 2) * (h + pad) - (pad + 1) / 2)
        names.append(str(class_names[cls]) if class_names is not None
                      and cls < len(class_names) else str(cls))
    ax.set_yticks(ticks, labels=names, fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return _save_png(fig, path, dpi=dpi)
