"""Speed options of a run (the recipe's ``performance`` section) and where they apply.

They change how the arithmetic is carried out, never what is computed; see
docs/performance.md for what each costs in accuracy and gains in time.

- ``tf32`` (CUDA): TensorFloat-32 for convolutions and matrix products. On by default:
  PyTorch's own default already runs cuDNN convolutions in TF32, which is how the
  reference implementations of DC/DSA/DM/MTT ran on Ampere-class GPUs.
- ``channels_last`` (CUDA): networks in NHWC layout (their activations follow), the
  layout tensor-core kernels use natively. On by default; the values are the same up to
  summation order. On a CPU the networks stay NCHW: oneDNN's channels-last GroupNorm
  backward loses precision (relative error ~1e-3 in the image gradients against ~1e-7 in
  NCHW, measured), so only the gradient-free chunked passes run channels-last there
  (``mim4dd_kit/training/chunked.py``), where the forward kernels are accurate.
- ``bf16`` (CUDA, or CPUs with native bf16): autocast of the DD loss and regularizer to
  bfloat16. Off by default: it rounds activations to 8 bits of mantissa, which is more
  than summation-order noise.
- ``compile``: ``torch.compile`` on every backbone the run builds. Off by default: the
  first iterations pay the compilation, which only long runs earn back.
- ``chunk_mb`` (CPU): activation budget of the chunked gradient-free passes over real
  batches (``mim4dd_kit/training/chunked.py``); 0 sends whole batches.
- ``compile_passes`` (CPU): those chunked passes through ``torch.compile`` (Inductor
  fuses each block's normalisation, activation and pooling into one loop over the
  activations); ``auto`` compiles for runs long enough to earn the compilation back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field

from ..api import NumbersModel
from ..core.heap import keep_freed_memory

if TYPE_CHECKING:  # torch is imported where a run applies the settings, not to validate them
    import torch
    from torch import nn


#: the shortest CPU run for which ``compile_passes: auto`` compiles the chunked passes
COMPILE_AUTO_ITERATIONS = 200


class PerformanceSettings(NumbersModel):
    """How a run computes (not what): precision, memory layout, compilation."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tf32: bool = Field(True, description="CUDA: TF32 convolutions and matrix products")
    channels_last: bool = Field(True, description="CUDA: NHWC (channels-last) networks")
    bf16: bool = Field(False, description="autocast the loss computation to bfloat16")
    compile: bool = Field(False, description="torch.compile every backbone the run builds")
    compile_passes: bool | Literal["auto"] = Field(
        "auto", description="CPU: run the chunked gradient-free passes (real-side "
        "features, class sums, logits) through torch.compile, which fuses each block's "
        "normalisation, activation and pooling (DM: 1.08 -> 0.84 s per iteration on a "
        "2-core CPU, docs/performance.md; values equal up to float "
        f"rounding). 'auto': on for CPU runs of at least {COMPILE_AUTO_ITERATIONS} "
        "iterations, where the compilation (seconds, once per network shape) pays off"
    )
    chunk_mb: float = Field(
        8.0, ge=0, description="CPU: activation budget (MiB) of chunked real-data passes; "
        "0 = whole batches"
    )


def configure_backends(settings: PerformanceSettings, device: torch.device) -> None:
    """Process-wide switches: TF32 on CUDA; on a CPU, freed activations stay in the C heap
    (:func:`mim4dd_kit.core.heap.keep_freed_memory`)."""
    keep_freed_memory(device)
    if device.type == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = True


def backbone_factory(
    make: Callable[[], nn.Module], settings: PerformanceSettings, device: torch.device
) -> Callable[[], nn.Module]:
    """Wrap a backbone factory so every network comes out in the configured form."""
    layout = settings.channels_last and device.type == "cuda"
    if not layout and not settings.compile:
        return make

    def build() -> nn.Module:
        import torch

        net = make()
        if layout:
            net = net.to(memory_format=torch.channels_last)
        if settings.compile:
            # with torch.compile inlining nn.Modules (its default), fresh networks of one
            # class should reuse the compiled code; not measured on this project's machines
            net.compile()
        return net

    return build


@contextlib.contextmanager
def autocast(settings: PerformanceSettings, device: torch.device) -> Iterator[None]:
    """bfloat16 autocast around the loss computation when ``bf16`` is set."""
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=settings.bf16):
        yield


def chunk_bytes(settings: PerformanceSettings) -> int:
    return int(settings.chunk_mb * 2**20)


def compile_passes(settings: PerformanceSettings, device: torch.device,
                   iterations: int) -> bool:
    """Whether a run's chunked gradient-free passes go through ``torch.compile``: only on
    a CPU (elsewhere the batch goes whole), as set, or for ``auto`` when the run has at
    least :data:`COMPILE_AUTO_ITERATIONS` iterations."""
    if getattr(device, "type", str(device)) != "cpu":
        return False
    if settings.compile_passes == "auto":
        return iterations >= COMPILE_AUTO_ITERATIONS
    return bool(settings.compile_passes)
