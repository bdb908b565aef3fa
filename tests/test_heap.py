"""mvboost_core.heap: malloc_trim is called only for CPU inference (the CPU tactics switch decides whether it is called)."""
from __future__ import annotations

import torch

from mvboost_core import heap


def test_release_freed_heap_only_for_cpu_inference(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: (lambda n: calls.append(n)))
    x = torch.zeros(2)
    with torch.no_grad():
        heap.release_freed_heap(x)
    assert calls == [0]
    heap.release_freed_heap(x)  # autograd on: training / gradient code never trims
    assert calls == [0]
    with torch.no_grad():
        heap.release_freed_heap(torch.zeros(2, device="meta"))  # not a CPU tensor
    assert calls == [0]


def test_real_malloc_trim_is_callable_on_linux():
    fn = heap._malloc_trim()
    if fn is not None:  # glibc
        assert fn(0) in (0, 1)
    with torch.inference_mode():
        heap.release_freed_heap(torch.ones(3))
