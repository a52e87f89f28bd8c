"""Expert trajectories for trajectory matching (MTT): trained once, cached, reused.

An *expert* is the run's backbone trained on the real training set with plain SGD
(Cazenavette et al., "Dataset Distillation by Matching Training Trajectories", CVPR 2022;
reference ``buffer.py``: lr 0.01, momentum 0, weight decay 0, batch 256, DSA on the real
batches). Its parameters are recorded at initialisation (epoch 0) and after every epoch.

Layout under ``<cache>/buffers/<key>/``::

    buffer.json                  provenance: format, toolkit/torch versions, key inputs,
                                 created/updated times, experts present
    expert_0000.safetensors      "params": float32 (epochs + 1, P), every parameter of the
    expert_0001.safetensors      backbone flattened in ``named_parameters`` order; one
    ...                          "buffer.<name>" tensor (epochs + 1, ...) per module buffer
                                 (BatchNorm statistics); the names and shapes are in the
                                 file's metadata

``<key>`` hashes everything that changes a trajectory (data set content and spec,
normalisation, backbone, augmentation, ``expert_lr``, batch, epochs, momentum, weight decay, seed).
The number of experts is *not* part of it: expert ``i`` is trained on its own RNG stream
seeded by ``(buffer_seed, i)``, so asking for more experts extends a folder and asking for
fewer uses its first ones. Each file is written atomically, so an interrupted build keeps
its finished experts and resumes with the missing ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ...api import RunContext
from ...core import provenance
from ...core.errors import DataError
from ...core.files import atomic_write
from ...core.runtime import isolated_rng
from ...training.loop import sgd_epochs

if TYPE_CHECKING:
    from .loss import MTT

BUFFER_FORMAT = "mdk-expert-buffer/1"
PROVENANCE = "buffer.json"
#: data set parameters that only say where the data lives; the content hash identifies it
_LOCATION_KEYS = frozenset({"root", "download", "path"})


def train_epochs(params: MTT.Params) -> int:
    """Epochs every expert is trained: ``train_epochs`` or max_start_epoch + expert_epochs."""
    if params.train_epochs is not None:
        return params.train_epochs
    return params.max_start_epoch + params.expert_epochs


def _augmentation_identity(augment: Any) -> dict[str, Any] | None:
    if augment is None:
        return None
    cls = type(augment)
    spec = getattr(augment, "params", None)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": spec.model_dump(mode="json") if hasattr(spec, "model_dump") else None,
        "strategy": getattr(augment, "strategy", None),
    }


def key_inputs(ctx: RunContext, params: MTT.Params) -> dict[str, Any]:
    """Everything that changes an expert's trajectory, as a JSON-able dict."""
    info = ctx.data.info
    spec = {k: v for k, v in ctx.dataset_spec.items() if k not in _LOCATION_KEYS}
    return {
        "format": BUFFER_FORMAT,
        "dataset": {"identity": dict(ctx.data.identity), "spec": spec,
                    "mean": list(info.mean), "std": list(info.std)},
        "backbone": dict(ctx.backbone_spec),
        "augmentation": _augmentation_identity(ctx.augment),
        "train_epochs": train_epochs(params),
        "expert_lr": params.expert_lr,
        "expert_batch": params.expert_batch,
        "expert_momentum": params.expert_momentum,
        "expert_weight_decay": params.expert_weight_decay,
        "buffer_seed": params.buffer_seed,
    }


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def buffer_key(ctx: RunContext, params: MTT.Params) -> str:
    """A short hash of :func:`key_inputs` naming the buffer folder."""
    return hashlib.sha256(_canonical(key_inputs(ctx, params)).encode()).hexdigest()[:16]


def buffer_dir(ctx: RunContext, params: MTT.Params) -> Path:
    return Path(ctx.cache_dir) / "buffers" / buffer_key(ctx, params)


def expert_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"expert_{index:04d}.safetensors"


def expert_seed(buffer_seed: int, index: int) -> int:
    """Seed of expert ``index``'s own RNG stream (independent of every other expert)."""
    digest = hashlib.sha256(f"mdk-expert:{buffer_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def flat_parameters(net: nn.Module) -> Tensor:
    """Every parameter of ``net`` flattened into one vector (P,), ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def train_expert(
    ctx: RunContext, params: MTT.Params, index: int, on_epoch: Any = None
) -> dict[str, Tensor]:
    """Train expert ``index`` on its own RNG stream; return the tensors of its file.

    ``"params"`` is (epochs + 1, P) on the CPU (row 0: the initialisation); every module
    buffer gets a ``"buffer.<name>"`` tensor (epochs + 1, ...). ``on_epoch()`` is called
    after every epoch (progress).
    """
    epochs = train_epochs(params)
    images, labels = ctx.data.train_images, ctx.data.train_labels
    with isolated_rng(expert_seed(params.buffer_seed, index), ctx.device):
        net = ctx.make_backbone().to(ctx.device)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=params.expert_lr,
                              momentum=params.expert_momentum,
                              weight_decay=params.expert_weight_decay)
        rows = [flat_parameters(net).cpu()]
        bufs = {name: [b.detach().cpu().clone()] for name, b in net.named_buffers()}

        def record(_epoch: int) -> None:
            rows.append(flat_parameters(net).cpu())
            for name, b in net.named_buffers():
                bufs[name].append(b.detach().cpu().clone())
            if on_epoch is not None:
                on_epoch()

        # DSA per sample on the real batches, as the reference's buffer.py
        sgd_epochs(net, opt, images, labels, epochs=epochs, batch=params.expert_batch,
                   augment=ctx.augment, on_epoch=record)
    tensors = {"params": torch.stack(rows).contiguous()}
    tensors.update({f"buffer.{k}": torch.stack(v).contiguous() for k, v in bufs.items()})
    return tensors


def _layout(net: nn.Module) -> dict[str, str]:
    names = [n for n, _ in net.named_parameters()]
    shapes = [list(p.shape) for _, p in net.named_parameters()]
    return {"param_names": json.dumps(names), "param_shapes": json.dumps(shapes)}


def _write_provenance(folder: Path, inputs: dict[str, Any], params: MTT.Params) -> None:
    path = folder / PROVENANCE
    now = provenance.now()
    created = now
    if path.exists():
        try:
            created = json.loads(path.read_text(encoding="utf-8")).get("created", now)
        except (OSError, ValueError):
            pass
    present = sorted(int(p.stem.split("_")[1]) for p in folder.glob("expert_*.safetensors"))
    doc = {
        "format": BUFFER_FORMAT,
        **provenance.environment(),
        "created": created,
        "updated": now,
        "key": folder.name,
        "inputs": inputs,
        "epochs": train_epochs(params),
        "experts": present,
    }
    text = json.dumps(doc, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def ensure_buffer(ctx: RunContext, params: MTT.Params, *, progress: bool = False) -> Path:
    """Return the folder of the experts ``params`` describe, training the missing ones.

    Experts ``0 .. num_experts - 1`` must exist; finished expert files are reused, so a
    second call trains nothing and an interrupted build resumes. Training runs on each
    expert's own seeded RNG stream, so the caller's random stream is left untouched.
    ``progress`` shows a progress bar on stderr.
    """
    folder = buffer_dir(ctx, params)
    missing = [i for i in range(params.num_experts) if not expert_path(folder, i).exists()]
    inputs = key_inputs(ctx, params)
    if not missing:
        if not (folder / PROVENANCE).exists():
            _write_provenance(folder, inputs, params)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _write_provenance(folder, inputs, params)
    with isolated_rng(0, ctx.device):  # the layout probe must not draw from the caller
        layout = _layout(ctx.make_backbone())
    epochs = train_epochs(params)
    columns = [TextColumn("[bold]experts"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[expert]}")]
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("experts", total=len(missing) * epochs, expert="")
        for index in missing:
            bar.update(task, expert=f"expert {index}")
            tensors = train_expert(ctx, params, index,
                                   on_epoch=lambda: bar.update(task, advance=1))
            meta = {"format": BUFFER_FORMAT, "index": str(index),
                    "seed": str(expert_seed(params.buffer_seed, index)),
                    "epochs": str(epochs), **layout}
            atomic_write(expert_path(folder, index),
                         lambda tmp, t=tensors, m=meta: save_file(t, tmp, metadata=m))
    _write_provenance(folder, inputs, params)
    return folder


def _open(folder: Path, index: int):
    path = expert_path(folder, index)
    if not path.exists():
        raise DataError(f"expert {index} is missing from {folder}; build the buffer first "
                        "(ensure_buffer or `mdk buffer`)")
    return safe_open(str(path), framework="pt", device="cpu")


def load_expert(folder: str | Path, index: int, epochs: Sequence[int] | None = None) -> Tensor:
    """Expert ``index``'s flattened parameters: (epochs + 1, P), or only the rows ``epochs``.

    Only the requested rows are read from the file (memory-mapped), so a call costs
    ``len(epochs) * P`` floats whatever the trajectory's length.
    """
    with _open(Path(folder), index) as f:
        rows = f.get_slice("params")
        if epochs is None:
            return rows[:]
        return torch.stack([rows[int(e):int(e) + 1][0] for e in epochs])


def load_expert_buffers(
    folder: str | Path, index: int, epochs: Sequence[int]
) -> dict[str, Tensor]:
    """Expert ``index``'s module buffers at ``epochs``: name -> (len(epochs), ...)."""
    out = {}
    with _open(Path(folder), index) as f:
        for key in f.keys():
            if key.startswith("buffer."):
                sl = f.get_slice(key)
                out[key[len("buffer."):]] = torch.stack([sl[int(e):int(e) + 1][0]
                                                         for e in epochs])
    return out


def expert_layout(folder: str | Path, index: int = 0) -> tuple[list[str], list[list[int]]]:
    """Parameter names and shapes recorded in expert ``index``'s file."""
    with _open(Path(folder), index) as f:
        meta = f.metadata() or {}
    return json.loads(meta["param_names"]), json.loads(meta["param_shapes"])
