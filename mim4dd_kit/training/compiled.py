"""``torch.compile`` where the toolkit uses it: the chunked gradient-free passes
(:data:`PASSES`, ``performance.compile_passes``) and the evaluation's training
(:func:`training_forward`, ``train_from_scratch``'s ``compile``).

On a CPU each block of a ConvNet is one convolution followed by three memory-bound layers
(normalisation, activation, pooling) that eagerly each read and write the whole activation
again; Inductor fuses them into one loop (docs/performance.md, "Compiled gradient-free
passes"). Values differ from eager ones by float rounding only. Compilation happens once
per architecture and input shape: modules are inlined, so a fresh network of the same
structure (DM draws one every iteration) reuses the compiled code. Where no C++ compiler
is available, one warning is printed and everything runs eagerly.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

#: held while a network trained with :func:`training_forward` runs its first epoch, where
#: compilation happens, so that networks on concurrent workers do not compile at once
TRAINING_LOCK = threading.Lock()
_warned: list[str] = []


def quiet_cpu_compile() -> None:
    """Drop torch's "No CUDA runtime is found" warning, which its C++ toolchain lookup
    logs on CPU-only machines that have a CUDA folder (not a problem for CPU kernels)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeFilter) for f in log.filters):
        log.addFilter(_NoCudaRuntimeFilter())


class _NoCudaRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


class CompiledPasses:
    """``net.features(x)`` and ``net(x)`` through ``torch.compile`` (Inductor), shared by
    every network. If compiling fails (e.g. no C++ compiler) one warning is printed and
    the passes run eagerly from then on (:attr:`broken` says why)."""

    def __init__(self) -> None:
        self._features: Callable | None = None
        self._forward: Callable | None = None
        self.broken: str | None = None
        self._lock = threading.Lock()

    def _build(self) -> None:
        if self._features is None:
            quiet_cpu_compile()
            self._features = torch.compile(lambda net, x: net.features(x), dynamic=False)
            self._forward = torch.compile(lambda net, x: net(x), dynamic=False)

    def _call(self, which: str, net: nn.Module, x: Tensor):
        eager = net.features if which == "features" else net
        if self.broken is not None:
            return eager(x)
        with self._lock:
            self._build()
        try:
            return (self._features if which == "features" else self._forward)(net, x)
        except Exception as exc:
            # an error of the network itself raises again here, uncompiled; only when the
            # eager call succeeds is compilation to blame: say so once, then stay eager
            result = eager(x)
            with self._lock:
                if self.broken is None:
                    first = (str(exc).splitlines() or [""])[0][:200]
                    self.broken = f"{type(exc).__name__}: {first}"
                    warnings.warn(
                        "performance.compile_passes: torch.compile failed "
                        f"({self.broken}); the gradient-free passes run uncompiled",
                        RuntimeWarning, stacklevel=3)
            return result

    def features(self, net: nn.Module, x: Tensor) -> list[Tensor]:
        return self._call("features", net, x)

    def forward(self, net: nn.Module, x: Tensor) -> Tensor:
        return self._call("forward", net, x)


#: the process's compiled passes (their compiled code is shared by every network)
PASSES = CompiledPasses()


def cpu_compiler_available() -> bool:
    """Whether a C++ compiler for Inductor's CPU kernels is on the PATH (``$CXX``,
    ``c++``, ``g++`` or ``clang++``)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++",
                                         "clang++"))


def training_forward(net: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """``torch.compile(net)`` for training (forward and backward), or None, with one
    warning per process, where no C++ compiler for Inductor's CPU kernels is on the PATH.
    Run the first epoch under :data:`TRAINING_LOCK`."""
    param = next(net.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    if on_cpu and not cpu_compiler_available():
        if not _warned:
            _warned.append("no C++ compiler")
            warnings.warn("train_from_scratch compile: no C++ compiler (c++, g++, clang++ or "
                          "$CXX) for torch.compile's CPU kernels; the networks train "
                          "uncompiled", RuntimeWarning, stacklevel=3)
        return None
    quiet_cpu_compile()
    return torch.compile(net, dynamic=False)
