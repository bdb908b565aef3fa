"""Give freed C-heap memory back to the OS between large blocks of CPU inference (glibc ``malloc_trim``).

glibc serves allocations below its dynamic mmap threshold (which grows up to 32 MiB after the first large free)
from heaps that it only shrinks at their top. During a UNet or LGM forward the activations freed by one block then
stay resident while the next block allocates new ones: RSS that is free but never returned, 0.1–0.4 GiB at the
peak of these models. :func:`release_freed_heap` calls ``malloc_trim(0)`` so the peak stays near the live set.
It only releases memory that is already free (no allocator setting changes) and costs a few milliseconds. Only the
CPU inference tactics call it (:mod:`mvboost_core.tactics`, one switch for all of them).
Measured: Era3D UNet batch 12 fp32 forward peak 5.50 GiB with a trim before each transformer vs 5.65–5.88 GiB
without, same time within noise (docs/benchmarks.md).
"""
from __future__ import annotations

import ctypes
import functools
import sys

import torch

__all__ = ["release_freed_heap"]


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim(size_t)``, or ``None`` on other platforms / C libraries (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_freed_heap(x: torch.Tensor) -> None:
    """``malloc_trim(0)`` if ``x`` is a CPU tensor and autograd is off; else a no-op (also without glibc)."""
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        fn = _malloc_trim()
        if fn is not None:
            fn(0)
