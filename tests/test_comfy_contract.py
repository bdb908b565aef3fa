"""ComfyUI contract: every node of the pack, the example workflows, import behaviour (see comfy_harness.py)."""
from __future__ import annotations

import ast
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_harness import (  # noqa: F401  (comfy_env is a pytest fixture)
    COMFYUI_ROOT,
    REPO_ROOT,
    WorkflowError,
    check_node_contract,
    comfy_env,
    load_extension,
    node_classes,
    ui_to_api_graph,
)

UI_WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((REPO_ROOT / "workflows" / "api").glob("*.json"))


def _requires_new_comfyui(ui: dict) -> bool:
    """UI workflows marked extra.mvboost.requires_comfyui (e.g. the 2026 native splat nodes) have no API twin."""
    return bool(((ui.get("extra") or {}).get("mvboost") or {}).get("requires_comfyui"))


def test_every_node_satisfies_the_contract_with_empty_model_folders(comfy_env):
    assert comfy_env.nodes, "the pack registered no nodes"
    assert set(comfy_env.nodes) == set(comfy_env.display_names), "every node needs a display name"
    problems = [p for nid in comfy_env.nodes for p in comfy_env.validate_node(nid)]
    assert not problems, "\n".join(problems)


def test_contract_checker_catches_violations():
    class Bad:
        CATEGORY = "other"
        RETURN_TYPES = ["IMAGE"]
        FUNCTION = "missing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"n": ("INT", {"default": 1}), "g": ("GS_PLY",)}}

    class Raises(Bad):
        @classmethod
        def INPUT_TYPES(cls):
            raise FileNotFoundError("models/lgm")

    errs = "\n".join(check_node_contract("BadNode", Bad, "Bad"))
    for needle in ("must start with 'MVBoost'", "display name", "CATEGORY", "'min'", "GS_PLY",
                   "RETURN_TYPES must be a tuple", "FUNCTION"):
        assert needle in errs, needle
    assert "INPUT_TYPES() raised" in "\n".join(check_node_contract("MVBoostX", Raises, "MVBoost: X"))


def test_harness_folder_paths_refuses_escaping_prefix_like_comfyui(comfy_env):
    fp = comfy_env.folder_paths
    out = fp.get_output_directory()
    with pytest.raises(Exception, match="outside the output folder is not allowed"):
        fp.get_save_image_path("../../x", out)
    folder, name, counter, sub, _ = fp.get_save_image_path("a/b", out, 8, 8)
    assert (folder, name, counter, sub) == (str(Path(out) / "a"), "b", 1, "a")
    (Path(folder) / "b_00007_.ply").write_bytes(b"")
    assert fp.get_save_image_path("a/b", out)[2] == 8


def test_pack_services_use_comfy_inside_the_harness(comfy_env):
    c = importlib.import_module(comfy_env.package.__name__ + ".nodes._comfy")
    assert c.in_comfyui()
    assert c.get_output_directory() == str(comfy_env.output_dir)
    c.register_model_folders()
    c.register_model_folders()  # idempotent
    fnp = comfy_env.folder_paths.folder_names_and_paths
    for name in ("lgm", "era3d", "lgm_loras"):
        assert fnp[name][0] == [str(comfy_env.models_dir / name)]
    (comfy_env.models_dir / "lgm").mkdir()
    (comfy_env.models_dir / "lgm" / "tiny.safetensors").write_bytes(b"x")
    (comfy_env.models_dir / "lgm" / "notes.txt").write_text("x")
    (comfy_env.models_dir / "era3d" / "tiny_era3d").mkdir(parents=True)
    (comfy_env.models_dir / "era3d" / "tiny_era3d" / "model_index.json").write_text("{}")
    assert c.get_filename_list("lgm") == ["tiny.safetensors"]
    assert c.get_model_dir_list("era3d", marker="model_index.json") == ["tiny_era3d"]
    assert c.get_full_path("era3d", "tiny_era3d") == str(comfy_env.models_dir / "era3d" / "tiny_era3d")
    with pytest.raises(FileNotFoundError, match="lgm"):
        c.get_full_path("lgm", "missing.safetensors")
    with pytest.raises(ValueError, match="outside the output folder"):
        c.get_save_image_path("../../x", c.get_output_directory())
    # progress updates go through comfy.utils and are interruption points
    bar = c.ProgressBar(3)
    bar.update(1)
    assert comfy_env.progress[-1] == (1, 3)
    comfy_env.interrupt()
    with pytest.raises(comfy_env.InterruptProcessingException):
        bar.update(1)


def test_workflow_validation_reports_problems(comfy_env):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
          "2": {"class_type": "InvertMask", "inputs": {"mask": ["1", 0]}},
          "3": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(WorkflowError) as ei:
        comfy_env.run_workflow(wf)
    msg = str(ei.value)
    assert "value_not_in_list" in msg and "return_type_mismatch" in msg and "NoSuchNode" in msg
    assert "prompt_no_outputs" in msg


def test_core_load_image_stand_in_matches_core_conventions(comfy_env):
    import numpy as np
    from PIL import Image

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[1:3, 1:4, 3] = 255
    Image.fromarray(rgba, "RGBA").save(comfy_env.input_dir / "a.png")
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
          "2": {"class_type": "InvertMask", "inputs": {"mask": ["1", 1]}},
          "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    res = comfy_env.run_workflow(wf)
    img, mask = res.output("1", 0), res.output("1", 1)
    assert img.shape == (1, 4, 5, 3) and mask.shape == (1, 4, 5)
    assert float(mask[0, 0, 0]) == 1.0 and float(mask[0, 1, 1]) == 0.0  # mask = 1 - alpha
    assert "2" not in res.outputs  # like ComfyUI, only output nodes and their ancestors run
    assert res.ui["3"]["images"][0]["type"] == "temp"
    assert (comfy_env.temp_dir / res.ui["3"]["images"][0]["filename"]).exists()


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_and_api_twin_describe_the_same_graph(comfy_env, ui_path):
    ui = json.loads(ui_path.read_text())
    assert ui.get("version") == 0.4 and {"nodes", "links", "last_node_id", "last_link_id"} <= set(ui)
    if _requires_new_comfyui(ui):
        pytest.skip(f"{ui_path.name} needs ComfyUI {ui['extra']['mvboost']['requires_comfyui']} core nodes")
    api_path = REPO_ROOT / "workflows" / "api" / ui_path.name
    assert api_path.exists(), f"{ui_path.name} has no API twin in workflows/api/"
    api = json.loads(api_path.read_text())
    converted = ui_to_api_graph(ui, comfy_env.all_nodes)
    assert {k: v["class_type"] for k, v in converted.items()} == {k: v["class_type"] for k, v in api.items()}
    for nid, node in api.items():
        assert converted[nid]["inputs"] == node["inputs"], f"node {nid} differs between UI and API format"
    # links in the UI file are consistent with the node sockets they name
    nodes = {n["id"]: n for n in ui["nodes"]}
    for lid, src, sslot, dst, dslot, typ in ui["links"]:
        assert nodes[src]["outputs"][sslot]["type"] == typ and lid in nodes[src]["outputs"][sslot]["links"]
        assert nodes[dst]["inputs"][dslot]["link"] == lid
    assert (REPO_ROOT / "workflows" / (ui_path.stem + ".jpg")).exists(), "template thumbnail missing"


def test_every_api_workflow_has_a_ui_twin():
    for p in API_WORKFLOWS:
        assert (REPO_ROOT / "workflows" / p.name).exists(), f"workflows/api/{p.name} has no UI twin"


V1_WORKFLOWS = REPO_ROOT / "tests" / "data" / "v1_workflows"


@pytest.mark.parametrize("ui_path", sorted(V1_WORKFLOWS.glob("*.json")), ids=lambda p: p.name)
def test_workflows_saved_with_the_v1_nodes_still_load(comfy_env, ui_path):
    """tests/data/v1_workflows holds the example workflows as saved before the V3 migration (V1 nodes). Node ids,
    input names and widget order are unchanged, so they convert to their API twins and validate against the V3
    nodes (the real frontends load them in test_comfy_frontend.py)."""
    ui = json.loads(ui_path.read_text())
    if _requires_new_comfyui(ui):
        known = set(comfy_env.nodes)
        assert {n["type"] for n in ui["nodes"] if n["type"].startswith("MVBoost")} <= known
        return
    api = json.loads((V1_WORKFLOWS / "api" / ui_path.name).read_text())
    converted = ui_to_api_graph(ui, comfy_env.all_nodes)
    for nid, node in api.items():
        assert converted[nid]["class_type"] == node["class_type"]
        assert converted[nid]["inputs"] == node["inputs"], f"node {nid} differs"
    errors, _ = comfy_env._validate({k: v for k, v in api.items()}, {}, True)
    # only the model/file names are unknown here (no models or inputs placed in this test)
    assert all("value_not_in_list" in e or "not found" in e for e in errors), errors


def _copy_pack(dst: Path) -> Path:
    root = dst / "ComfyUI-MVBoost.copy"  # a '.' in the folder name, like ComfyUI's _x_ mangling case
    shutil.copytree(REPO_ROOT / "nodes", root / "nodes", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "mvboost_core", root / "mvboost_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "__init__.py", root / "__init__.py")
    return root


def test_a_broken_node_module_or_optional_backend_hides_no_other_node(comfy_env, tmp_path, monkeypatch):
    baseline = set(comfy_env.nodes)
    root = _copy_pack(tmp_path)
    (root / "nodes" / "zz_broken.py").write_text("import this_module_does_not_exist_xyz\n")
    # a new module following the convention (module-level NODES list) is discovered without touching anything else
    (root / "nodes" / "zz_extra.py").write_text(
        "from comfy_api.latest import io\n"
        "class MVBoostZZExtra(io.ComfyNode):\n"
        "    @classmethod\n"
        "    def define_schema(cls):\n"
        "        return io.Schema(node_id='MVBoostZZExtra', display_name='MVBoost: ZZ', category='MVBoost',\n"
        "                         inputs=[], outputs=[io.Int.Output()])\n"
        "    @classmethod\n"
        "    def execute(cls):\n"
        "        return io.NodeOutput(7)\n"
        "NODES = [MVBoostZZExtra]\n")

    class _BrokenGsplat:  # importing gsplat raises something other than ImportError (CUDA libs missing)
        def find_spec(self, name, path=None, target=None):
            if name == "gsplat" or name.startswith("gsplat."):
                raise OSError("libcudart.so: cannot open shared object file")
            return None

    monkeypatch.setattr(sys, "meta_path", [_BrokenGsplat(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "gsplat", raising=False)
    pkg = load_extension(root, fresh=True)
    try:
        classes = node_classes(pkg)
        assert set(classes) == baseline | {"MVBoostZZExtra"}
        errors = sys.modules[pkg.__name__ + ".nodes"].IMPORT_ERRORS
        assert set(errors) == {"zz_broken"}
        # and the nodes still run (render backend "auto" falls back to the pure-torch rasterizer)
        import torch

        G = importlib.import_module(pkg.__name__ + ".mvboost_core.gaussians").Gaussians
        g = G(means=torch.zeros(1, 3), opacities=torch.tensor([0.9]), scales=torch.full((1, 3), 0.1),
              quats=torch.tensor([[1.0, 0, 0, 0]]), colors=torch.tensor([[1.0, 0, 0]]))
        comfy_env.nodes = classes
        comfy_env.all_nodes = {**comfy_env.core_nodes, **classes}
        img, alpha = comfy_env.run_node("MVBoostRenderGaussians", gaussians=g, frames=1, elevation=0.0, radius=1.5,
                                        fov=49.1, resolution=16, background="#000000")
        assert img.shape == (1, 16, 16, 3) and float(alpha[0, 8, 8]) > 0.5
    finally:
        for k in [k for k in sys.modules if k == pkg.__name__ or k.startswith(pkg.__name__ + ".")]:
            del sys.modules[k]


def test_the_pack_registers_through_comfy_entrypoint_only():
    """ComfyUI takes the V1 path when a module defines NODE_CLASS_MAPPINGS and then ignores comfy_entrypoint."""
    pkg = load_extension()
    assert not hasattr(pkg, "NODE_CLASS_MAPPINGS") and callable(pkg.comfy_entrypoint)
    assert pkg.WEB_DIRECTORY == "./web" and (REPO_ROOT / "web" / "mvboost.js").is_file()
    for mod in (REPO_ROOT / "nodes").glob("[!_]*.py"):
        assert "NODE_CLASS_MAPPINGS" not in mod.read_text(), f"{mod.name} still defines V1 mappings"


def test_importing_the_extension_is_cheap():
    code = f"""
import sys, time
sys.path.append({str(COMFYUI_ROOT)!r})
sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy_api.latest, folder_paths  # ComfyUI's own import cost, not ours
before = set(sys.modules)
t = time.perf_counter()
import comfy_harness
pkg = comfy_harness.load_extension()
n = len(comfy_harness.node_classes(pkg))
dt = time.perf_counter() - t
import torch
heavy = sorted(m for m in ("diffusers", "transformers", "peft", "lpips", "accelerate", "gsplat", "torchvision")
               if m in sys.modules and m not in before)
print(repr((n, heavy, torch.cuda.is_initialized(), round(dt, 2))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    n, heavy, cuda_init, _seconds = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert n > 0
    assert heavy == [], f"importing the pack pulled in heavy modules {heavy}; import them inside functions"
    assert cuda_init is False


def test_outside_comfyui_the_package_imports_registers_nothing_and_says_why(tmp_path):
    """Plain Python without ComfyUI: the root package still imports (nothing registered, one log line naming the
    missing comfy_api), and the service helpers keep their fallbacks."""
    code = f"""
import sys, logging, importlib
logging.basicConfig(level=logging.WARNING, format="%(message)s")
sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
import os
os.environ["MVBOOST_MODELS_DIR"] = {str(tmp_path / "does_not_exist")!r}
import comfy_harness
pkg = comfy_harness.load_extension()
c = importlib.import_module(pkg.__name__ + ".nodes._comfy")
print(repr((len(pkg.NODES), sorted(pkg.IMPORT_ERRORS), c.in_comfyui(), c.get_folder_paths("lgm"),
            c.get_filename_list("lgm"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    n, errors, in_comfy, lgm_paths, files = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert (n, errors, in_comfy, files) == (0, ["comfy_api"], False, [])
    assert lgm_paths == [str(tmp_path / "does_not_exist" / "lgm")]
    assert "comfy_api.latest" in out.stderr and "v0.3.64" in out.stderr
