"""The C heap keeps freed activations on glibc CPU processes (mim4dd_kit/core/heap.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from mim4dd_kit.core import heap

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")

#: a small training step, repeated: the minor page faults of the second round of steps
#: are printed with whether the thresholds took effect
PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    # PR_SET_THP_DISABLE: 4 KiB pages whatever the host's transparent-huge-page setting,
    # so that the fault counts below mean the same on every machine
    ctypes.CDLL("libc.so.6").prctl(41, 1, 0, 0, 0)
    import torch
    from mim4dd_kit.core.heap import keep_freed_memory
    on = keep_freed_memory() if sys.argv[1] == "keep" else False
    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = 64  # the first block's output, 200 x 64 x 28 x 28 floats, is 40 MiB: above
            # every mmap threshold glibc allows, so only M_MMAP_MAX 0 keeps it in a heap
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.GroupNorm(c, c), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.GroupNorm(c, c),
        torch.nn.ReLU(), torch.nn.AvgPool2d(2))
    x = torch.randn(200, 1, 28, 28)
    def steps():
        for _ in range(2):
            net(x).square().mean().backward()
    steps()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps()
    print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def probe(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in (heap.ENV_SWITCH, *heap.GLIBC_ENV)}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@glibc
def test_freed_activations_stay_in_the_heap():
    """With the thresholds raised, repeating a step touches no fresh pages; with glibc's
    defaults the same step faults in its large activations again every time."""
    kept, faults_kept = probe("keep")
    plain, faults_plain = probe("plain")
    assert kept and not plain
    assert faults_plain > 5_000, faults_plain  # the defaults give pages back and refault
    assert faults_kept < faults_plain / 5, (faults_kept, faults_plain)


@glibc
def test_the_user_can_keep_glibc_defaults():
    """MDK_KEEP_HEAP=0 switches it off (the step faults as with glibc's defaults); glibc's
    own variables, when set, stand (the thresholds are left as they made them)."""
    kept, faults = probe("keep", MDK_KEEP_HEAP="0")
    assert not kept
    assert faults > 5_000, faults
    for var in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_"):
        kept, _ = probe("keep", **{var: "131072"})
        assert not kept


def test_idempotent_and_reports_the_same(monkeypatch):
    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.setenv("MDK_KEEP_HEAP", "0")
    assert heap.keep_freed_memory() is False
    monkeypatch.delenv("MDK_KEEP_HEAP")
    assert heap.keep_freed_memory() is False  # decided once per process


def test_other_devices_leave_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(heap, "_done", None)
    assert heap.keep_freed_memory(torch.device("cuda")) is False
    assert heap.keep_freed_memory("meta") is False
    assert heap._done is None  # nothing decided for the process
