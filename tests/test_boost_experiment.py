"""A small run of benchmarks/boost_experiment.py: base trained from scratch, boost data, LoRA, evaluation."""
from __future__ import annotations

import argparse
import importlib.util

import pytest

import boost_helpers as H


@pytest.fixture(autouse=True, scope="module")
def _threads():
    yield from H.one_thread()


@pytest.mark.slow
def test_lora_boost_learns_on_synthetic_objects(tmp_path):
    spec = importlib.util.spec_from_file_location("boost_experiment", H.REPO / "benchmarks" / "boost_experiment.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    args = argparse.Namespace(size=16, views=2, n_base=4, base_steps=12, base_lr=2e-3, n_boost=4, lora_steps=16,
                              lora_lr=3e-3, rank=4, n_test=2, seed=0, threads=1, workdir=str(tmp_path))
    try:
        r = exp.run(args, log=lambda *a: None)
    finally:
        H.reset_accelerate()
    # the LoRA fits its pseudo-ground-truth: renders of the boost objects get closer to their targets
    assert r["boost_set_boosted"]["psnr"] > r["boost_set_base"]["psnr"] + 0.05, r
    # removing the adapter gives the base model back exactly
    assert r["base_after_remove"] == r["base"]
    # rank 4: A [4,in] + B [out,4] for qkv (C->3C) and proj (C->C) of 2 MVAttention at C=32 and 6 at C=64
    assert r["params_lora"] == sum(4 * (i + o) for i, o in [(32, 96), (32, 32)] * 2 + [(64, 192), (64, 64)] * 6)
    assert (tmp_path / "boost_lora.safetensors").is_file() and (tmp_path / "boost_ds" / "manifest.json").is_file()
