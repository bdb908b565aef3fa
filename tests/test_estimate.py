"""mvboost_core.estimate (scaling laws, the one-line message, when it stays silent) and the extrapolation of
benchmarks/e2e_bench.py on tiny configs (no timing assertions)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from mvboost_core import estimate as E
from mvboost_core.pipeline import pose_stage_totals
from mvboost_core.pose import PoseOptions

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import e2e_bench  # noqa: E402


def _est(**kw):
    kw = {"device": "cpu", "cpu_class": "avx2", "threads": 2, **kw}
    return E.estimate_generate(**kw)


def test_scaling_laws():
    p = E.CPU_PROFILES["avx2"]
    a, b = _est(), _est(steps=80)
    assert b.stages["era3d"] - a.stages["era3d"] == pytest.approx(40 * p.era3d_step_cfg)
    no_cfg = _est(guidance=1.0)
    assert a.stages["era3d"] - no_cfg.stages["era3d"] == pytest.approx(40 * p.era3d_step_cfg / 2)  # CFG doubles
    assert _est(resolution=256).stages["era3d"] == pytest.approx(a.stages["era3d"] / 4)
    four = _est(threads=4)
    for k in ("era3d", "lgm", "pose", "turntable"):
        assert four.stages[k] == pytest.approx(a.stages[k] / 2)
    assert four.stages["save"] == a.stages["save"]
    assert "pose" not in _est(optimize_pose=False).stages
    assert _est(frames=72).stages["turntable"] == pytest.approx(2 * a.stages["turntable"])
    assert _est(turntable_size=192).stages["turntable"] == pytest.approx(a.stages["turntable"] / 4)
    n = pose_stage_totals(PoseOptions())
    assert a.stages["pose"] == pytest.approx(n["search"] * p.pose_search + n["pose"] * p.pose_iter
                                             + n["adjust"] * p.adjust_iter)
    assert a.total == pytest.approx(sum(a.stages.values()))
    # the AVX-512 profiles are derived from the docs' rows: Era3D a bit faster, the rest as AVX2
    x = _est(cpu_class="avx512_bf16")
    assert x.stages["era3d"] < a.stages["era3d"] and x.stages["pose"] == a.stages["pose"]
    assert _est(cpu_class="weird").profile.name == "other"
    # Era3D computing in bf16 (avx512_bf16 CPU whose probe found bf16 faster): only the CFG steps get cheaper
    y = _est(cpu_class="avx512_bf16+bf16")
    assert y.stages["era3d"] < x.stages["era3d"] and y.stages["lgm"] == x.stages["lgm"]
    assert y.stages["pose"] < x.stages["pose"]  # measured on that host (22 s vs 47 s on the AVX2 one)
    # AMX tiles: measured end to end (~24 min), every Era3D stage and LGM cheaper than on the avx512_bf16 profiles
    z = _est(cpu_class="amx_bf16+bf16")
    assert z.stages["era3d"] < y.stages["era3d"] / 3 and z.stages["lgm"] < y.stages["lgm"]
    assert 15 * 60 < z.total < 40 * 60


@pytest.mark.parametrize("fast", [False, True])
def test_profile_follows_the_auto_precision_of_this_machine(force_cpu_class, fast):
    force_cpu_class("avx512_bf16", bf16_fast=fast)
    assert E.host_profile("cpu").name == ("avx512_bf16+bf16" if fast else "avx512_bf16")
    force_cpu_class("avx512_bf16", bf16_fast=fast, amx=True)
    assert E.host_profile("cpu").name == ("amx_bf16+bf16" if fast else "avx512_bf16")
    force_cpu_class("avx2", bf16_fast=fast)
    assert E.host_profile("cpu").name == "avx2"


def test_message_format_and_silence():
    a = _est()
    assert a.total > 3600  # 40 CFG steps on a 2-thread AVX2 CPU take hours
    pat = (r"Estimated time on this CPU \(AVX2, 2 threads\): ~\d+ h \d\d min \(Era3D 40 steps ~\d+ h \d\d min, "
           r"LGM ~\d+ s, pose ~\d+ (s|min), turntable ~\d+ (s|min)\)\. A CUDA GPU takes about a minute\.")
    assert re.fullmatch(pat, a.message), a.message
    assert "1 thread)" in _est(threads=1).message
    assert "pose" not in _est(optimize_pose=False).message
    assert E.estimate_generate("cuda", steps=40).message is None  # never on a GPU (torch.device only, no CUDA)
    assert E.estimate_generate("mps").message is None
    assert _est(min_seconds=a.total + 1).message is None  # under the threshold: nothing to say
    assert _est(min_seconds=a.total - 1).message is not None
    gpu = E.estimate_generate("cuda")
    assert gpu.profile is E.GPU_PROFILE and gpu.total < 300  # "about a minute" is what the message promises


def test_format_rough():
    assert E.format_rough(3) == "~3 s"
    assert E.format_rough(14) == "~15 s"
    assert E.format_rough(95) == "~2 min"
    assert E.format_rough(7500) == "~2 h 05 min"
    assert E.format_rough(3600) == "~1 h 00 min"


def test_bench_targets_match_the_cli_cpu_settings():
    n = pose_stage_totals(PoseOptions())
    assert {k: e2e_bench.TARGET[k] for k in n} == n
    assert e2e_bench.TARGET["era3d_step"] == 40 and e2e_bench.TARGET["turntable"] == 36


def test_extrapolate_arithmetic():
    secs = {"load": 3.0, "era3d_encode": 1.0, "era3d_step": 10.0, "era3d_decode": 4.0, "lgm": 2.0, "search": 5.0,
            "pose": 8.0, "adjust": 6.0, "turntable": 4.0, "save": 1.0}
    units = {"era3d_step": 2, "search": 25, "pose": 4, "adjust": 3, "turntable": 8}
    rows = {r["stage"]: r for r in e2e_bench.extrapolate(secs, units)}
    assert rows["era3d_step"]["extrapolated"] == pytest.approx(5.0 * 40)
    assert rows["pose"]["extrapolated"] == pytest.approx(2.0 * e2e_bench.TARGET["pose"])
    assert rows["adjust"]["extrapolated"] == pytest.approx(2.0 * e2e_bench.TARGET["adjust"])
    assert rows["turntable"]["extrapolated"] == pytest.approx(0.5 * 36)
    assert rows["search"]["extrapolated"] == pytest.approx(5.0 / 25 * e2e_bench.TARGET["search"])
    assert rows["decode" if "decode" in rows else "era3d_decode"]["extrapolated"] == 4.0  # once-only stage
    assert rows["total"]["extrapolated"] == pytest.approx(sum(r["extrapolated"] for k, r in rows.items()
                                                              if k != "total"))
    assert list(rows)[:3] == ["load", "era3d_encode", "era3d_step"]


@pytest.mark.slow
def test_bench_runs_on_tiny_configs(tmp_path, capsys):
    js = tmp_path / "r.json"
    assert e2e_bench.main(["--small", "--steps", "2", "--pose-iters", "2", "--adjust-iters", "1", "--frames", "2",
                           "--size", "32", "--threads", "1", "--workdir", str(tmp_path / "w"), "--json",
                           str(js)]) == 0
    out = capsys.readouterr().out
    assert "| **total** |" in out and "Era3D CFG step" in out
    d = json.loads(js.read_text())
    rows = {r["stage"]: r for r in d["rows"]}
    assert [k for k, _ in e2e_bench.STAGES] == [k for k in rows if k != "total"]  # every stage measured
    assert rows["era3d_step"]["units"] == 2 and rows["turntable"]["units"] == 2
    assert rows["adjust"]["units"] == 1 and rows["pose"]["units"] == 3  # 2 Adam + 1 LM
    for k in ("era3d_step", "pose", "adjust", "turntable"):
        r = rows[k]
        assert r["extrapolated"] == pytest.approx(r["seconds"] / r["units"] * e2e_bench.TARGET[k])
    assert all(r["seconds"] >= 0 for r in d["rows"])
    assert (tmp_path / "w" / "out" / "e2e.ply").is_file()


def test_estimate_command_prints_the_stages(capsys):
    import argparse

    ap = argparse.ArgumentParser()
    E.register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["estimate", "--steps", "10", "--threads", "2", "--no-pose"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Estimated time on this CPU (") and "Era3D 10 steps" in out[0]
    assert [ln.split()[0] for ln in out[1:-1]] == ["load", "era3d", "lgm", "turntable", "save"]
    assert out[-1].startswith("  (constants: ")
