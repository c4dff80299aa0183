"""Through the real ComfyUI server: the pack loads, its nodes describe themselves, graphs run.

Not marked slow, so it is part of the default run: one server start (about
10 s) plus a few 64x64 graphs on the random-weight SD1.5 checkpoint.
"""
from __future__ import annotations

import ast

import numpy as np
import pytest
from PIL import Image


from host import comfy_path  # noqa: E402
from comfy_server import (  # noqa: E402
    CHECKPOINT_NAME, INPUT_IMAGE_NAME, PACK_DIR, PACK_NAME, PACK_PYTHON_MODULE, ComfyServerError)



def declared_node_ids() -> list[str]:
    """NODE_IDS from nodes/__init__.py, read without importing the pack."""
    path = PACK_DIR / "nodes" / "__init__.py"
    for stmt in ast.parse(path.read_text(), str(path)).body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "NODE_IDS" for t in targets):
            value = ast.literal_eval(stmt.value)
            assert isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), value
            return list(value)
    pytest.fail(f"{path} has no `NODE_IDS = [...]` of string literals")


def txt2img_prompt(ckpt_name: str = CHECKPOINT_NAME, prefix: str = "pnp-core") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red fox", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 0, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def test_pack_imports_cleanly(comfy_server):
    log = comfy_server.log_text()
    assert "Import times for custom nodes:" in log, comfy_server.log_tail()
    section = log.split("Import times for custom nodes:", 1)[1].strip().split("\n\n", 1)[0]
    pack_lines = [line for line in section.splitlines() if line.rstrip().endswith(f"/{PACK_NAME}")]
    assert pack_lines, f"{PACK_NAME} missing from the custom-node import times:\n{section}"
    if "IMPORT FAILED" in pack_lines[0]:
        host = (str(comfy_path()), str(PACK_DIR / ".venv"))
        mentions = "\n".join(line for line in log.splitlines() if PACK_NAME in line
                              or (str(PACK_DIR) in line and not any(h in line for h in host)))
        pytest.fail(f"the pack failed to import:\n{mentions}\n--- log tail ---\n{comfy_server.log_tail()}")
    # Host modules that need optional extras (torchaudio) may fail; nothing else may.
    host_modules = {p.name for d in ("comfy_extras", "comfy_api_nodes") for p in (comfy_path() / d).iterdir()}
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line
              and line.split("IMPORT FAILED:")[-1].strip() not in host_modules]
    assert not failed, "\n".join(failed) + "\n" + comfy_server.log_tail()


def test_object_info_describes_every_pack_node(comfy_server):
    info = comfy_server.object_info()
    served = {node_id for node_id, node in info.items() if node.get("python_module") == PACK_PYTHON_MODULE}
    assert served, f"no node with python_module {PACK_PYTHON_MODULE!r} in /object_info"
    assert served == set(declared_node_ids())
    problems = []
    for node_id in sorted(served):
        node = info[node_id]
        # The server falls back to the id when a node declares no display name.
        if not node.get("display_name") or node["display_name"] == node_id:
            problems.append(f"{node_id}: no display name")
        # ... and to "sd" when it declares no category.
        if not node.get("category") or node["category"] == "sd":
            problems.append(f"{node_id}: no category")
        for section in ("required", "optional"):
            for name, spec in (node.get("input", {}).get(section) or {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not options.get("tooltip"):
                    problems.append(f"{node_id}: input {name!r} has no tooltip")
    assert not problems, "\n".join(problems)


def test_core_txt2img_graph_runs(comfy_server):
    outputs = comfy_server.run(txt2img_prompt(), timeout=120)
    files = comfy_server.output_files(outputs)
    assert len(files) == 1 and files[0].is_file(), outputs
    assert files[0].parent == comfy_server.output_dir
    pixels = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 2.0, "the decoded image is flat: the checkpoint's features do not reach the pixels"


def test_input_image_loads_and_round_trips_through_the_vae(comfy_server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGE_NAME}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    files = comfy_server.output_files(comfy_server.run(prompt, timeout=60))
    assert len(files) == 1 and files[0].is_file()
    assert Image.open(files[0]).size == (64, 64)


def test_invalid_prompt_is_reported(comfy_server):
    with pytest.raises(ComfyServerError) as err:
        comfy_server.run(txt2img_prompt(ckpt_name="no-such-model.safetensors"), timeout=60)
    message = str(err.value)
    assert "CheckpointLoaderSimple" in message and "no-such-model.safetensors" in message, message
    assert "not in list" in message.lower(), message


def test_execution_error_is_reported(comfy_server):
    # A 16-channel SD3 latent passes validation but the SD1.5 VAE cannot decode it.
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    with pytest.raises(ComfyServerError) as err:
        comfy_server.run(prompt, timeout=60)
    message = str(err.value)
    assert "VAEDecode" in message and "RuntimeError" in message, message
