"""The ComfyUI host on sys.path and this pack importable as `comfyui_pnp`, for the tests,
the benchmarks and the GPU check."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def comfy_path() -> Path:
    """The ComfyUI host: COMFYUI_PATH, else .venv/comfyui-path (written by scripts/setup.sh), else .comfyui/."""
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    recorded = ROOT / ".venv" / "comfyui-path"
    if recorded.is_file() and recorded.read_text().strip():
        return Path(recorded.read_text().strip())
    return ROOT / ".comfyui"


def load_pack():
    if "comfyui_pnp" in sys.modules:
        return sys.modules["comfyui_pnp"]
    spec = importlib.util.spec_from_file_location("comfyui_pnp", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_pnp"] = module
    spec.loader.exec_module(module)
    return module


def setup(cpu: bool) -> Path:
    """Put the host first on sys.path; with `cpu`, before comfy.model_management probes for CUDA."""
    comfy = comfy_path()
    if not (comfy / "main.py").exists():
        raise RuntimeError(f"No ComfyUI host at {comfy}: run `bash scripts/setup.sh` first.")
    sys.path.insert(0, str(comfy))
    sys.path.insert(0, str(Path(__file__).parent))  # test helpers import by plain name
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    load_pack()
    return comfy


def run_node(node_class, *args) -> tuple:
    """The outputs of a core ComfyUI node, whichever node API the host writes it in: the
    V3 `execute` classmethod (newer hosts) or the V1 FUNCTION method (older ones; BasicGuider
    on 0.3.64, say). Arguments in the node's input order."""
    if hasattr(node_class, "define_schema"):
        out = node_class.execute(*args)
        return tuple(out.result if hasattr(out, "result") else out)  # some V3 nodes return a plain tuple (HyperTile)
    return tuple(getattr(node_class(), node_class.FUNCTION)(*args))
