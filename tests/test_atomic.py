"""mvboost_core.atomic: every file this project writes is complete or absent, and readable by other users (0644
minus the umask), whichever writer made it: turntable PNGs/GIF, .ply/.splat, LoRA adapters, LGM checkpoints, Era3D
prompt caches, dataset manifests."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from mvboost_core.atomic import atomic_write, current_umask, file_mode


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_write_modes_and_cleanup(tmp_path, umask):
    assert current_umask() == umask
    p = atomic_write(tmp_path / "sub" / "a.bin", b"hello")
    assert p.read_bytes() == b"hello" and _mode(p) == 0o644 & ~umask
    q = atomic_write(tmp_path / "b.png", writer=lambda t: t.write_bytes(b"png"))
    assert q.read_bytes() == b"png" and _mode(q) == file_mode()
    # a failing writer leaves the old file untouched and no temporary file behind
    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(p, writer=lambda t: (t.write_bytes(b"half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert p.read_bytes() == b"hello"
    assert sorted(x.name for x in (tmp_path / "sub").iterdir()) == ["a.bin"]


def test_every_writer_makes_0644_files(tmp_path, umask):
    from mvboost_core.boost import lora as L
    from mvboost_core.gaussians import Gaussians
    from mvboost_core.lgm import LGM, get_config, save_lgm_checkpoint
    from mvboost_core.pipeline import write_outputs

    n = 64
    g = Gaussians(means=torch.rand(n, 3) - 0.5, opacities=torch.full((n,), 0.8), scales=torch.full((n, 3), 0.05),
                  quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(), colors=torch.rand(n, 3))
    paths = write_outputs(g, tmp_path / "out", "thing", torch.rand(3, 16, 16, 3), mesh=("glb",))
    files = [paths["ply"], paths["splat"], paths["animation"], paths["glb"], *paths["frames"]]
    model = LGM(get_config("micro"))
    ckpt = save_lgm_checkpoint(model, tmp_path / "lgm" / "m.safetensors")
    L.inject_lora(model, rank=2)
    L.save_adapter(model, tmp_path / "loras" / "a.safetensors")
    files += [ckpt, tmp_path / "loras" / "a.safetensors"]
    want = 0o644 & ~umask
    assert {str(f): oct(_mode(f)) for f in files} == {str(f): oct(want) for f in files}
    assert not [p for p in tmp_path.rglob(".*") if ".tmp" in p.name]
