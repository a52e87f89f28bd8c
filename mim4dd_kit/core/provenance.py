"""Provenance: the one schema of the "who made this file, when, with what" entries of every
file the toolkit writes with metadata (synthetic sets from runs and coreset baselines,
expert buffers' ``buffer.json``).

Every such record holds :func:`environment` (``toolkit_version``, ``torch_version``,
``python_version``) and UTC times from :func:`now` (``started``/``finished`` for what a
process computed, ``created``/``updated`` for a folder that grows); a record about a data
set holds :func:`dataset_entry`, and one about plugins :func:`components`.
"""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

import torch

from .. import __version__


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, str]:
    """The software that wrote the file."""
    return {"toolkit_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version()}


def dataset_entry(data: Any) -> dict[str, Any]:
    """A data set's identity (content hash, split, size...) and image description, from a
    :class:`~mim4dd_kit.api.RealData`."""
    info = data.info
    return {**data.identity, "name": info.name, "num_classes": info.num_classes,
            "class_names": list(info.class_names), "channels": info.channels,
            "image_size": list(info.image_size), "mean": list(info.mean),
            "std": list(info.std)}


def components(registry: Any, refs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Where each plugin came from: ``{"key": ..., **registry.provenance(kind, name)}`` per
    ``(key, ref)``, and the same for the references nested in its parameters (a
    regularizer's critic: ``regularizer.critics``)."""
    out = []
    for key, ref in refs:
        out.append({"key": key, **registry.provenance(ref.kind, ref.name)})
        for sub in registry.nested(registry.validate(ref.kind, ref)):
            out.append({"key": f"{key}.{sub.kind}", **registry.provenance(sub.kind, sub.name)})
    return out
