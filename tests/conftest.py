"""Test set-up: the ComfyUI host on sys.path (CPU), and this pack importable as `comfyui_pnp`."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def comfy_path() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    recorded = ROOT / ".venv" / "comfyui-path"
    if recorded.exists():
        return Path(recorded.read_text().strip())
    return ROOT / ".comfyui"


COMFY = comfy_path()
if not (COMFY / "main.py").exists():
    raise RuntimeError(f"No ComfyUI host at {COMFY}: run `bash scripts/setup.sh` first.")
sys.path.insert(0, str(COMFY))
sys.path.insert(0, str(Path(__file__).parent))  # test helpers import by plain name

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before comfy.model_management probes for CUDA


def _load_pack():
    spec = importlib.util.spec_from_file_location("comfyui_pnp", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_pnp"] = module
    spec.loader.exec_module(module)
    return module


_load_pack()

# Tiny test models run faster on one thread than on two contending ones.
import torch  # noqa: E402

torch.set_num_threads(1)

from comfy_server import comfy_server  # noqa: E402,F401  (session fixture: the real server)

import folder_paths  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def folders(tmp_path):
    """Fresh ComfyUI output and input folders for the test."""
    out, inp = tmp_path / "output", tmp_path / "input"
    out.mkdir(), inp.mkdir()
    old = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    folder_paths.set_output_directory(str(out))
    folder_paths.set_input_directory(str(inp))
    yield out, inp
    folder_paths.set_output_directory(old[0])
    folder_paths.set_input_directory(old[1])
