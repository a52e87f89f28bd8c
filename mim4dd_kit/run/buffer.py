"""``mdk buffer``: train (or find) the expert trajectories a recipe's DD loss needs (any
loss with ``needs_expert_buffers``, MTT among the built-in ones), before the run, from the
same context a run builds (mim4dd_kit/run/context.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..api import trait
from ..config.recipe import load_recipe
from ..config.registry import default_registry
from ..core.errors import PluginError, RecipeError
from ..core.heap import keep_freed_memory
from ..core.runtime import resolve_device
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
    backbone, augmentation, seed) and hands the loss's validated parameters and that
    context to the loss class's ``build_expert_buffers`` (losses that set
    ``needs_expert_buffers``; mim4dd_kit/api/plugins.py), which trains the missing experts;
    returns where they are.
    """
    registry = registry or default_registry()
    r = load_recipe(recipe, list(overrides), registry)
    name = r.dd_loss.name
    cls = registry.load("dd_losses", name)
    if not trait(cls, "dd_losses", "needs_expert_buffers"):
        raise RecipeError(
            f"{recipe}: dd_loss is {name!r}, which trains no expert trajectories before a "
            "run; `mdk buffer` builds them for losses that do (trajectory matching, "
            "dd_loss: mtt)"
        )
    params = registry.validate("dd_losses", r.dd_loss)
    dev = resolve_device(device or r.device)
    keep_freed_memory(dev)
    ctx = build_context(r, dev, registry)
    try:
        built = cls.build_expert_buffers(params, ctx=ctx, progress=progress)
    except NotImplementedError as exc:
        raise PluginError(f"dd loss {name!r}: {exc}") from None
    return {"path": str(built.path), "experts": built.experts, "trained": built.trained,
            "epochs": built.epochs}
