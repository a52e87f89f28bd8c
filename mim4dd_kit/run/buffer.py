"""``mdk buffer``: train (or find) the expert trajectories a recipe's MTT loss needs,
before the run, from the same context a run builds (mim4dd_kit/run/context.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config.recipe import load_recipe
from ..config.registry import default_registry
from ..core.errors import RecipeError
from ..core.runtime import resolve_device
from ..dd_losses.mtt import MTT
from ..dd_losses.mtt.buffers import buffer_dir, ensure_buffer, expert_path, train_epochs
from .context import build_context


def buffer_for_recipe(
    recipe: str | Path,
    *,
    overrides: Sequence[str] = (),
    device: str | None = None,
    progress: bool = False,
    registry: Any = None,
) -> dict[str, Any]:
    """Build (or find) the expert buffer a recipe's trajectory-matching loss needs.

    The library side of ``mdk buffer``: resolves the recipe exactly as a run would (data,
    backbone, augmentation, seed), trains the missing experts and returns where they are.
    """
    registry = registry or default_registry()
    r = load_recipe(recipe, list(overrides), registry)
    cls = registry.load("dd_losses", r.dd_loss.name)
    if not (isinstance(cls, type) and issubclass(cls, MTT)):
        raise RecipeError(
            f"{recipe}: dd_loss is {r.dd_loss.name!r}; `mdk buffer` trains the expert "
            "trajectories of trajectory matching (dd_loss: mtt)"
        )
    params = registry.validate("dd_losses", r.dd_loss)
    ctx = build_context(r, resolve_device(device or r.device), registry)
    folder = buffer_dir(ctx, params)
    missing = [i for i in range(params.num_experts) if not expert_path(folder, i).exists()]
    ensure_buffer(ctx, params, progress=progress)
    return {"path": str(folder), "experts": params.num_experts, "trained": len(missing),
            "epochs": train_epochs(params)}
