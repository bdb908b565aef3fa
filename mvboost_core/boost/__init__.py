"""Boosting (MVBoost training side): refined multi-view dataset generation, LoRA training on LGM's cross-view
attention, and LoRA adapter files.

* :mod:`mvboost_core.boost.lora` -- peft injection on the MVAttention ``qkv``/``proj`` layers, adapter
  ``.safetensors`` I/O with metadata, :func:`~mvboost_core.boost.lora.apply_lora` / ``remove_lora``.
* :mod:`mvboost_core.boost.dataset` -- ``mvboost boost-data``: atomic, resumable, sharded sample writer.
* :mod:`mvboost_core.boost.train` -- ``mvboost train-lora``: accelerate training loop.
* :mod:`mvboost_core.boost.cli` -- ``register(subparsers)`` for the ``mvboost`` command.

Submodules are imported lazily (peft / accelerate are only loaded when used).
"""
from __future__ import annotations

__all__ = ["lora", "dataset", "train", "cli"]
