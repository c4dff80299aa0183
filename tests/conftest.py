"""Test set-up: the ComfyUI host on sys.path (CPU), and this pack importable as `comfyui_pnp`."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # test helpers import by plain name
import host  # noqa: E402

COMFY = host.setup(cpu=True)  # before comfy.model_management probes for CUDA

# Tiny test models run faster on one thread than on two contending ones.
import torch  # noqa: E402

torch.set_num_threads(1)

from comfy_server import comfy_server  # noqa: E402,F401  (session fixture: the real server)
from workflow_runs import workflow_runs  # noqa: E402,F401  (session fixture: each shipped workflow run once)

import folder_paths  # noqa: E402
import pytest  # noqa: E402


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's `--dist loadfile` (scripts/test.sh), with every module that uses the real server
    counted as one file: one worker runs them all against one server (each shipped workflow runs once,
    and the frontend test finds its run in the server's cache), while the other worker runs the rest;
    a module's tests stay on one worker, so module fixtures are computed once."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # only under pytest-xdist

    class ServerAsOneFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "the server's modules" if uses_server(config.rootpath / module) else module

    return ServerAsOneFile(config, log)


@functools.cache
def uses_server(module: Path) -> bool:
    """A test module that names the session's server fixtures runs on the real server."""
    text = module.read_text(encoding="utf-8") if module.suffix == ".py" and module.is_file() else ""
    return "comfy_server" in text or "workflow_runs" in text


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


@pytest.fixture
def steady_free_memory(monkeypatch):
    """ComfyUI's CPU attention (sub-quadratic) sizes its chunks from the free memory, and
    torch.compile guards on that number: a compiled model recompiles whenever free memory
    moved between runs, with or without PnP. The compile tests pin it so that their counts
    measure PnP alone."""
    import comfy.model_management as mm

    free = mm.get_free_memory(mm.get_torch_device(), True)

    def fixed(dev=None, torch_free_too=False):
        return free if torch_free_too else free[0]
    monkeypatch.setattr(mm, "get_free_memory", fixed)

