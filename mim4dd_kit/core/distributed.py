"""Runs spread over several processes with ``torch.distributed``.

Every rank runs the same recipe with the same seed; work that splits without changing
results (evaluation networks, shards of the real batch) is divided by rank and joined with
collectives. Outside a process group every helper here is the identity, so single-process
code paths are unchanged.

Processes come from ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...;
:func:`init_from_env` joins the group they describe) or from :func:`launch`, which starts
them itself on one machine (``mdk run --nproc-per-node N``). See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .errors import MdkError, RunError

#: environment variables that describe a process group (set by torchrun and by launch)
GROUP_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the rank that writes outputs (rank 0), and in single-process runs."""
    return world()[0] == 0


def local_indices(n: int) -> list[int]:
    """The items ``0..n-1`` this rank handles: ``rank, rank + world, ...``."""
    rank, size = world()
    return list(range(rank, n, size))


def gather_indexed(local: dict[int, Any], n: int) -> list[Any]:
    """Join per-index results from every rank into one list of length ``n`` (all ranks)."""
    rank, size = world()
    if size > 1:
        parts: list[dict[int, Any] | None] = [None] * size
        dist.all_gather_object(parts, local)
        merged: dict[int, Any] = {}
        for part in parts:
            merged.update(part or {})
    else:
        merged = dict(local)
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"no rank produced results for items {missing}")
    return [merged[i] for i in range(n)]


# ------------------------------------------------------------------ inside a process group


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl``), or None outside a group."""
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return None


def barrier() -> None:
    """Wait for every rank (nothing outside a group)."""
    if world()[1] > 1:
        dist.barrier()


def env_describes_group() -> bool:
    """True when the environment names a process group (torchrun, :func:`launch`)."""
    return all(os.environ.get(k) for k in GROUP_ENV)


def init_from_env(device: torch.device | str = "cpu") -> torch.device:
    """Join the process group the environment describes; return this rank's device.

    Outside such an environment nothing happens and ``device`` comes back. Inside it a
    CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process on each node) and the
    group uses NCCL; any other device keeps its value and the group uses gloo. A group
    that already exists is kept.
    """
    device = torch.device(device)
    if not env_describes_group():
        return device
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise RunError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise RunError(
                f"process with LOCAL_RANK {local} needs GPU cuda:{local}, but this machine "
                f"shows {count} GPU(s); start at most {count} processes per node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", rank=rank, world_size=size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=size)
    return device


def destroy() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(params: Sequence[torch.Tensor], values: Sequence[float] = ()) -> list[float]:
    """Sum the ``.grad`` of ``params`` and the numbers ``values`` over ranks, in one
    collective; returns the summed values. Outside a group only the values come back.

    A gradient that is None on every rank stays None; one that is None on some ranks
    only counts as zeros there.
    """
    if world()[1] == 1 or not params:
        return [float(v) for v in values]
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    device = params[0].device
    pieces = [
        p.grad.detach().reshape(-1).to(dtype) if p.grad is not None
        else torch.zeros(p.numel(), dtype=dtype, device=device)
        for p in params
    ]
    present = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
    extra = torch.tensor([float(v) for v in values], dtype=dtype, device=device)
    flat = torch.cat([*pieces, present, extra])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    sizes = [p.numel() for p in params]
    summed = flat[: sum(sizes)].split(sizes)
    seen = flat[sum(sizes): sum(sizes) + len(params)].tolist()
    for p, g, n in zip(params, summed, seen, strict=True):
        p.grad = g.view_as(p).to(p.dtype) if n > 0 else None
    return flat[sum(sizes) + len(params):].tolist()


# --------------------------------------------------------------------- starting processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record(path: Path, payload: dict[str, Any]) -> None:
    try:
        data = pickle.dumps(payload)
    except Exception:  # an unpicklable value or exception: keep the text only
        payload = {k: v for k, v in payload.items() if k not in ("value", "error")}
        data = pickle.dumps(payload)
    path.write_bytes(data)


def _child(
    rank: int,
    nproc: int,
    port: int,
    threads: int | None,
    folder: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """Body of one started process: the group's environment, ``fn(*args)``, a record."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0",
    )
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(folder) / f"rank{rank}.pkl"
    try:
        value = fn(*args)
    except BaseException as exc:
        if not isinstance(exc, (MdkError, KeyboardInterrupt)):
            traceback.print_exc()  # a bug: show where, as a single process would
        _record(out, {
            "ok": False, "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc), "mdk": isinstance(exc, MdkError),
            "interrupt": isinstance(exc, KeyboardInterrupt), "error": exc,
        })
        raise
    _record(out, {"ok": True, "value": value})
    destroy()  # not after an error: peers may be gone, and NCCL's teardown can then block
    # The work is done and recorded. Leave without the interpreter's teardown: under load
    # a C++ library's destructors at exit sometimes aborted a finished process
    # ("terminate called without an active exception", about one 2-process run in ten on
    # a busy 2-core machine), which failed a run whose set was already written.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(0)


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        return pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception:  # e.g. a class the parent cannot import
        return {"ok": False, "type": "unknown", "message": "the error could not be read back",
                "mdk": False, "interrupt": False}


def _raise_child_error(records: list[dict[str, Any] | None], failure: str | None) -> None:
    errors = [(r, rec) for r, rec in enumerate(records) if rec is not None and not rec["ok"]]
    # a toolkit error explains itself; peers of a failed rank often only report that the
    # connection to it was lost, so prefer toolkit errors, then interrupts, then the rest
    for r, rec in errors:
        if rec["mdk"]:
            exc = rec.get("error")
            if isinstance(exc, MdkError):
                raise exc
            raise RunError(f"rank {r}: {rec['message']}")
    if any(rec["interrupt"] for _, rec in errors):
        raise KeyboardInterrupt
    if errors:
        r, rec = errors[0]
        raise RunError(f"process {r} of {len(records)} failed: {rec['type']}: {rec['message']}")
    if failure is not None or any(rec is None for rec in records):
        raise RunError(
            f"a process of the {len(records)}-process run ended without finishing"
            + (f" ({failure})" if failure else "")
            + "; see its output above (a process killed for memory ends this way)"
        )


def _exit_text(rank: int, exitcode: int) -> str:
    if exitcode >= 0:
        return f"process {rank} exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"process {rank} terminated with signal {name}"


def _wait(processes: Sequence[Any], folder: Path) -> str | None:
    """Wait for the started processes; None when each one finished its work, else what
    happened to the first that did not (its peers are then stopped by the caller).

    A process that exits non-zero after recording a finished result (it died on its way
    out, e.g. in a library's teardown) has done its work: the others are waited for, not
    stopped."""
    waiting = {p.sentinel: rank for rank, p in enumerate(processes)}
    while waiting:
        for sentinel in multiprocessing.connection.wait(list(waiting)):
            rank = waiting.pop(sentinel)
            proc = processes[rank]
            proc.join()
            if proc.exitcode == 0:
                continue
            record = _load_record(folder / f"rank{rank}.pkl")
            if record is not None and record["ok"]:
                continue
            return _exit_text(rank, proc.exitcode)
    return None


def launch(nproc: int, fn: Callable[..., Any], *args: Any, threads: int | None = None) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` new processes forming one process group on this machine.

    Each process gets ``MASTER_ADDR`` 127.0.0.1, a free ``MASTER_PORT``, ``RANK`` =
    ``LOCAL_RANK`` = its index and ``WORLD_SIZE`` = ``nproc`` (start method spawn), so
    ``fn`` joins the group with :func:`init_from_env`; the group is left when ``fn``
    returns. ``fn`` and ``args`` must be picklable (``fn`` a top-level function). Returns
    every rank's return value (None where it could not be pickled). An error in a process
    stops the others and is raised here: a toolkit error as itself, an interrupt as
    ``KeyboardInterrupt``, anything else as :class:`RunError` with the process's message.
    A process that dies after recording its finished result (on its way out) does not
    fail the run; a finished process leaves without the interpreter's teardown.
    ``threads`` sets torch's CPU threads per process (default: the CPUs shared out, unless
    ``OMP_NUM_THREADS`` is set).
    """
    if nproc < 1:
        raise RunError(f"the number of processes must be at least 1, got {nproc}")
    if threads is None and not os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="mdk-launch-") as folder:
        ctx = mp.start_processes(
            _child, args=(nproc, _free_port(), threads, folder, fn, args), nprocs=nproc,
            join=False, start_method="spawn",
        )
        try:
            failure = _wait(ctx.processes, Path(folder))
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            for p in ctx.processes:
                p.join()
        records = [_load_record(Path(folder) / f"rank{r}.pkl") for r in range(nproc)]
    _raise_child_error(records, failure)
    return [rec.get("value") if rec else None for rec in records]
