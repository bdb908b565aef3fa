"""LoRA on LGM's cross-view attention: targets, bit-exact strength 0 / removal, merge == unmerged, file format,
refusal of adapters trained on another base config."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import boost_helpers as H
from mvboost_core.boost import lora as L
from mvboost_core.lgm import LGM, init_lgm_weights_, load_lgm
from mvboost_core.lgm.network import MVAttention


@pytest.fixture(autouse=True, scope="module")
def _threads():
    yield from H.one_thread()


def _nano(seed_shift: float = 0.0) -> LGM:
    m = LGM(H.nano_config())
    init_lgm_weights_(m)
    if seed_shift:
        with torch.no_grad():
            m.conv.bias += seed_shift
    return m.eval()


def _x(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 9, cfg.input_size, cfg.input_size, generator=g)


def _randomise_lora(model, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in L.lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture()
def adapter(tmp_path):
    m = _nano()
    L.inject_lora(m, rank=4, alpha=8.0)
    _randomise_lora(m)
    path = tmp_path / "a.safetensors"
    L.save_adapter(m, path, training={"steps": 3})
    with torch.no_grad():
        y_inj = m(_x(m.config))
    return path, y_inj


def test_targets_are_exactly_the_mvattention_linears():
    m = _nano()
    targets = L.lora_target_names(m)
    mv = [n for n, mod in m.named_modules() if isinstance(mod, MVAttention)]
    assert len(mv) == 8
    assert sorted(targets) == sorted([f"{n}.attn.{k}" for n in mv for k in ("qkv", "proj")])
    linears = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert sorted(linears) == sorted(targets)  # LGM has no other Linear layers
    base = {k: v.clone() for k, v in m.state_dict().items()}
    L.inject_lora(m, rank=8)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(targets)
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable} == set(targets)
    # an optimisation step moves only LoRA tensors; every base tensor stays bit-identical
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    _randomise_lora(m, std=0.01)
    m(_x(m.config)).square().mean().backward()
    opt.step()
    after = m.state_dict()
    for k, v in base.items():
        k2 = k.replace(".qkv.", ".qkv.base_layer.").replace(".proj.", ".proj.base_layer.")
        assert torch.equal(after[k2 if k2 in after else k], v), k
    moved = [k for k in after if ".lora_B." in k and after[k].abs().sum() > 0]
    assert len(moved) == len(targets)


def test_injected_model_starts_equal_to_base():
    m = _nano()
    x = _x(m.config)
    with torch.no_grad():
        y0 = m(x)
        L.inject_lora(m, rank=4)
        assert torch.equal(m(x), y0)  # lora_B = 0


def test_adapter_file_format(adapter):
    path, _ = adapter
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        keys = sorted(f.keys())
        a = f.get_tensor("unet.mid_block.attns.0.attn.qkv.lora_A.weight")
        b = f.get_tensor("unet.mid_block.attns.0.attn.qkv.lora_B.weight")
    assert md["format"] == "mvboost-lgm-lora" and md["rank"] == "4" and float(md["alpha"]) == 8.0
    assert md["base_config"] == "nano"
    assert json.loads(md["base_architecture"])["down_channels"] == [32, 32, 64]
    assert md["base_checksum"] == L.base_weights_checksum(_nano())
    assert len(json.loads(md["target_modules"])) == 16 and len(keys) == 32
    assert a.shape == (4, 64) and b.shape == (192, 4) and a.dtype == torch.float32
    sd, info = L.load_adapter(path)
    assert info.rank == 4 and info.scaling == 2.0 and info.training == {"steps": 3}


def test_strength_zero_and_remove_are_bit_exact(adapter):
    path, _ = adapter
    m = _nano()
    x = _x(m.config)
    with torch.no_grad():
        y0 = m(x)
        L.apply_lora(m, path, strength=0.0)
        assert torch.equal(m(x), y0)
        L.apply_lora(m, path, strength=1.0)
        y1 = m(x)
        assert not torch.allclose(y1, y0, atol=1e-4)
        assert L.lora_applied(m)["merged"] and L.lora_applied(m)["strength"] == 1.0
        L.remove_lora(m)
        assert L.lora_applied(m) is None
        assert torch.equal(m(x), y0)
        assert all(isinstance(mod, torch.nn.Linear) for n, mod in m.named_modules() if n.endswith((".qkv", ".proj")))
        L.apply_lora(m, path, strength=1.0, merge=False)  # peft layers injected ...
        L.unmerge_lora(m)  # ... and swapped back out
        assert torch.equal(m(x), y0)
        assert L.base_weights_checksum(m) == L.base_weights_checksum(_nano())


def test_merged_equals_unmerged_and_training_forward(adapter):
    path, y_inj = adapter
    x = _x(H.nano_config())
    with torch.no_grad():
        for strength in (1.0, -0.7):
            m1, m2 = _nano(), _nano()
            L.apply_lora(m1, path, strength, merge=True)
            L.apply_lora(m2, path, strength, merge=False)
            y1, y2 = m1(x), m2(x)
            assert (y1 - y2).abs().max() < 2e-5, strength
            if strength == 1.0:
                assert (y1 - y_inj).abs().max() < 2e-5 and torch.equal(y2, y_inj)
        # re-applying replaces the previous LoRA instead of stacking it
        L.apply_lora(m1, path, 1.0)
        L.apply_lora(m1, path, 1.0)
        assert (m1(x) - y_inj).abs().max() < 2e-5


def test_apply_in_bf16_restores_exactly(adapter):
    path, _ = adapter
    m = _nano().to(torch.bfloat16)
    w0 = {k: v.clone() for k, v in m.state_dict().items()}
    L.apply_lora(m, path, 1.0, checksum="ignore")
    assert m.unet.mid_block.attns[0].attn.qkv.weight.dtype == torch.bfloat16
    assert not torch.equal(m.unet.mid_block.attns[0].attn.qkv.weight, w0["unet.mid_block.attns.0.attn.qkv.weight"])
    L.remove_lora(m)
    assert all(torch.equal(v, w0[k]) for k, v in m.state_dict().items())


def test_refuses_adapter_for_another_base_config(adapter, fixtures_dir):
    path, _ = adapter
    micro = load_lgm(fixtures_dir / "lgm" / "weights_micro.safetensors")
    w0 = {k: v.clone() for k, v in micro.state_dict().items()}
    with pytest.raises(L.LoRACompatibilityError, match=r"trained on LGM config 'nano'.*base model is 'micro'"):
        L.apply_lora(micro, path, 1.0)
    assert all(torch.equal(v, w0[k]) for k, v in micro.state_dict().items())  # untouched
    # refusing a second adapter keeps the first one applied
    m = _nano()
    L.apply_lora(m, path, 1.0)
    w1 = {k: v.clone() for k, v in m.state_dict().items()}
    L.inject_lora(micro, rank=2)
    L.save_adapter(micro, path.parent / "micro.safetensors")
    with pytest.raises(L.LoRACompatibilityError, match="trained on LGM config 'micro'"):
        L.apply_lora(m, path.parent / "micro.safetensors", 1.0)
    assert L.lora_applied(m)["path"] == str(path)
    assert all(torch.equal(v, w1[k]) for k, v in m.state_dict().items())


def test_other_base_weights_warn_or_refuse(adapter):
    path, _ = adapter
    other = _nano(seed_shift=0.01)
    with pytest.warns(UserWarning, match="different checkpoint or dtype"):
        L.apply_lora(other, path, 1.0)
    with pytest.raises(L.LoRACompatibilityError, match="base weights"):
        L.apply_lora(_nano(seed_shift=0.01), path, 1.0, checksum="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.apply_lora(_nano(), path, 1.0)  # same base: silent


def test_malformed_adapters_are_refused(adapter, tmp_path):
    path, _ = adapter
    sd, info = L.load_adapter(path)
    bare = tmp_path / "bare.safetensors"
    save_file(sd, str(bare))  # no metadata
    with pytest.raises(L.LoRAError, match="Not an MVBoost LGM LoRA"):
        L.apply_lora(_nano(), bare, 1.0)
    broken = tmp_path / "broken.safetensors"
    sd2 = dict(sd)
    sd2.pop("unet.mid_block.attns.0.attn.proj.lora_B.weight")
    save_file(sd2, str(broken), metadata=info.to_metadata())
    with pytest.raises(L.LoRAError, match="missing tensor unet.mid_block.attns.0.attn.proj.lora_B.weight"):
        L.load_adapter(broken)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(L.LoRAError, match="Cannot read"):
        L.load_adapter(junk)
    with pytest.raises(FileNotFoundError):
        L.apply_lora(_nano(), tmp_path / "nope.safetensors", 1.0)
    with pytest.raises(L.LoRAError, match="no LGM cross-view attention"):
        L.inject_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_gradient_checkpointing_gives_same_gradients():
    from mvboost_core.boost.train import enable_gradient_checkpointing

    grads = []
    for ckpt in (False, True):
        m = _nano()
        torch.manual_seed(0)
        L.inject_lora(m, rank=4, dropout=0.1)
        _randomise_lora(m)
        m.train()
        if ckpt:
            assert enable_gradient_checkpointing(m) == 8 + 14  # 8 MVAttention + 14 resnets
        torch.manual_seed(123)
        m(_x(m.config)).square().mean().backward()
        grads.append([p.grad.clone() for p in L.lora_parameters(m)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
