"""Checkpoint files without pickle: tensors in safetensors, everything else as JSON.

A run's resumable state (optimizer and scheduler state dicts, the regularizer's and the
loss's state dicts, the torch / NumPy / Python RNG states, the loss history) is a tree of
dicts, lists, tuples, tensors and plain values. :func:`save_state` stores every tensor of
the tree as a safetensors tensor and the tree itself, with each tensor replaced by a
reference, as JSON in the file's ``__metadata__``. Nothing in such a file is ever
imported, evaluated or unpickled: reading one can fail, but it cannot run code.

JSON spells the few non-JSON values with a one-key object whose key starts with ``$``:
``{"$t": name}`` a tensor, ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}`` a
dict whose keys are not all strings (or start with ``$``), ``{"$counter": [...]}`` a
``collections.Counter`` (a scheduler's milestones), ``{"$nd": {dtype, shape, data}}`` a
small NumPy array (the NumPy RNG key), ``{"$float": "inf"}`` a non-finite float. Floats
round-trip exactly (JSON writes ``repr``), tensors bit for bit, so a resumed run continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import CheckpointError

FORMAT = "mim4dd_kit.checkpoint/1"
#: nesting deeper than this is refused when reading (the toolkit's own trees are ~6 deep)
MAX_DEPTH = 64
_ND_DTYPES = {"uint8", "uint32", "int32", "int64", "float32", "float64", "bool"}
_TAGS = ("$t", "$tuple", "$dict", "$counter", "$nd", "$float")


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        # a private contiguous copy: safetensors refuses views and shared storage
        tensors[name] = obj.detach().to("cpu").clone().contiguous()
        return {"$t": name}
    if isinstance(obj, np.ndarray):
        if str(obj.dtype) not in _ND_DTYPES:
            raise CheckpointError(f"cannot store {where} in a checkpoint: a NumPy array of "
                                  f"dtype {obj.dtype}")
        return {"$nd": {"dtype": str(obj.dtype), "shape": list(obj.shape),
                        "data": obj.ravel().tolist()}}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors, where)
    if isinstance(obj, Counter):
        return {"$counter": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"$dict": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                          for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise CheckpointError(
        f"cannot store {where} in a checkpoint: a {type(obj).__module__}."
        f"{type(obj).__qualname__} is neither a tensor nor a plain value (a plugin's "
        "state_dict() must hold only tensors, numbers, strings, lists, tuples and dicts)"
    )


def _hashable(value: Any, where: str) -> Any:
    if isinstance(value, (str, int, float, bool, tuple)) or value is None:
        return value
    raise ValueError(f"{where}: a dict key must be a plain value, got {type(value).__name__}")


def _decode(obj: Any, tensors: Callable[[str], torch.Tensor], where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, tensors, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: unexpected JSON value of type {type(obj).__name__}")
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        tag, value = next(iter(obj.items()))
        if tag == "$t":
            if not isinstance(value, str):
                raise ValueError(f"{where}: a tensor reference must be a string")
            return tensors(value)
        if tag == "$float":
            if value not in ("inf", "-inf", "nan"):
                raise ValueError(f"{where}: {value!r} is not a non-finite float")
            return float(value)
        if tag == "$nd":
            if (not isinstance(value, dict) or value.get("dtype") not in _ND_DTYPES
                    or not isinstance(value.get("data"), list)
                    or not isinstance(value.get("shape"), list)):
                raise ValueError(f"{where}: a NumPy array needs dtype (one of "
                                 f"{', '.join(sorted(_ND_DTYPES))}), shape and data")
            data = value["data"]
            if not all(isinstance(v, (int, float, bool)) for v in data):
                raise ValueError(f"{where}: a NumPy array's data must be numbers")
            return np.asarray(data, dtype=value["dtype"]).reshape(value["shape"])
        if not isinstance(value, list):
            raise ValueError(f"{where}: {tag} must hold a list")
        items = [_decode(v, tensors, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if tag == "$tuple":
            return tuple(items)
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise ValueError(f"{where}: {tag} must hold [key, value] pairs")
        pairs = [(_hashable(k, where), v) for k, v in items]
        return Counter(dict(pairs)) if tag == "$counter" else dict(pairs)
    return {k: _decode(v, tensors, f"{where}.{k}", depth + 1) for k, v in obj.items()}


def save_state(path: str | Path, state: dict[str, Any], header: dict[str, str]) -> None:
    """Write ``state`` to ``path`` (a safetensors file); ``header`` are extra plain
    str -> str entries readable without touching the tensors (:func:`read_header`).
    The caller makes the write atomic (it writes to a temporary name)."""
    bad = [k for k in state if not isinstance(k, str) or k.startswith("$")]
    if bad:
        raise ValueError(f"top-level state keys must be plain strings, got {bad!r}")
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "state")
    meta = {**header, "format": FORMAT, "state": json.dumps(tree, allow_nan=False)}
    save_file(tensors, str(path), metadata=meta)


def read_header(path: str | Path) -> dict[str, str]:
    """The plain entries of a checkpoint file, without reading any tensor."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is not a readable checkpoint file ({type(exc).__name__}: "
            f"{_short(exc)}); pass --overwrite to start over"
        ) from None
    if meta.get("format") != FORMAT or "state" not in meta:
        raise CheckpointError(
            f"checkpoint {path} is not a mim4dd_kit checkpoint (no {FORMAT!r} format entry); "
            "pass --overwrite to start over"
        )
    return meta


def load_state(path: str | Path, device: Callable[[str], torch.device | str] | None = None,
               ) -> dict[str, Any]:
    """Read the state tree of a checkpoint. ``device(top_level_key)`` says where the
    tensors under that key go (default: the CPU)."""
    path = Path(path)
    meta = read_header(path)
    try:
        tree = json.loads(meta["state"])
        if not isinstance(tree, dict):
            raise ValueError("the state is not a JSON object")
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())

            def fetch_for(key: str) -> Callable[[str], torch.Tensor]:
                where = device(key) if device is not None else "cpu"

                def fetch(name: str) -> torch.Tensor:
                    if name not in names:
                        raise ValueError(f"state.{key} refers to a tensor {name!r} the file "
                                         "does not hold")
                    return f.get_tensor(name).to(where)
                return fetch

            return {k: _decode(v, fetch_for(k), f"state.{k}", 1) for k, v in tree.items()}
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged or hand-made file: say what, never run anything
        raise CheckpointError(
            f"checkpoint {path} is damaged ({type(exc).__name__}: {_short(exc)}); pass "
            "--overwrite to start over"
        ) from None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"
