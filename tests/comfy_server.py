"""Run the real ComfyUI server in a subprocess, with this pack installed, for tests.

conftest.py exposes its session fixture ``comfy_server``; ``start_server`` and
``stop_server`` do the same without pytest.

The server gets a fresh base directory holding the random-weight SD1.5
checkpoint (``CHECKPOINT_NAME``), a ControlNet for it (``CONTROLNET_NAME``),
the random-weight files of tests/flux_files.py (``FLUX_UNET_NAME``, the Chroma ``CHROMA_UNET_NAME`` and the
HunyuanVideo ``HUNYUAN_UNET_NAME`` in diffusion_models/, ``FLUX_CLIP_NAME`` in text_encoders/, ``FLUX_VAE_NAME``
and ``HUNYUAN_VAE_NAME`` in vae/), the random-weight files of tests/velocity_files.py (the Wan 2.1 ``WAN_UNET_NAME``
in diffusion_models/, the SD3.5 checkpoint ``SD35_CHECKPOINT_NAME`` in checkpoints/), a 64x64 test image and a
9-frame 64x64 test clip in input/
(``INPUT_IMAGE_NAME``, ``INPUT_VIDEO_NAME``), and this checkout linked as ``custom_nodes/comfyui-pnp-diffusion``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from checkpoint_factory import REPO_ROOT, cached_checkpoint
from host import comfy_path
from flux_files import cached_flux_file, clip_frames
from velocity_files import cached_velocity_file

PACK_NAME = "comfyui-pnp-diffusion"
PACK_DIR = REPO_ROOT
PACK_PYTHON_MODULE = f"custom_nodes.{PACK_NAME}"
CHECKPOINT_NAME = "pnp-test-sd15.safetensors"
CONTROLNET_NAME = "pnp-test-sd15-controlnet.safetensors"
FLUX_UNET_NAME = "pnp-test-flux.safetensors"
CHROMA_UNET_NAME = "pnp-test-chroma.safetensors"
FLUX_CLIP_NAME = "pnp-test-clip-l.safetensors"
FLUX_VAE_NAME = "pnp-test-flux-ae.safetensors"
HUNYUAN_UNET_NAME = "pnp-test-hunyuan-video.safetensors"
HUNYUAN_VAE_NAME = "pnp-test-hunyuan-tae.safetensors"
WAN_UNET_NAME = "pnp-test-wan.safetensors"
SD35_CHECKPOINT_NAME = "pnp-test-sd35.safetensors"
INPUT_IMAGE_NAME = "pnp-test-input.png"
INPUT_VIDEO_NAME = "pnp-test-clip.mp4"
INPUT_VIDEO_FPS = 8
STARTUP_TIMEOUT = 120.0


class ComfyServerError(AssertionError):
    """The server refused or failed a prompt; the message says which node and why."""

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_test_png(path, size: int = 64) -> Path:
    """A deterministic RGB image: diagonal colour gradient with a bright disc and a dark square."""
    import numpy as np
    from PIL import Image

    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([xs, ys, 1.0 - (xs + ys) / 2], axis=-1)
    rgb[(xs - 0.35) ** 2 + (ys - 0.4) ** 2 < 0.2 ** 2] = (1.0, 0.9, 0.2)
    rgb[(xs > 0.6) & (xs < 0.85) & (ys > 0.6) & (ys < 0.85)] = (0.1, 0.1, 0.3)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    return Path(path)


def write_test_video(path, fps: int = INPUT_VIDEO_FPS) -> Path:
    """flux_files.clip_frames as an H.264 MP4 (9 frames of 64x64: the test image with a square moving across)."""
    import av
    import numpy as np

    frames = (clip_frames().numpy() * 255).round().astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return Path(path)


def prepare_base_dir(base_dir) -> Path:
    base = Path(base_dir)
    for sub in ("models/checkpoints", "models/controlnet", "models/diffusion_models", "models/text_encoders",
                "models/vae", "input", "output", "custom_nodes"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    # Links, not copies: the models are hundreds of MB and ComfyUI follows links.
    (base / "models/checkpoints" / CHECKPOINT_NAME).symlink_to(cached_checkpoint("sd15"))
    (base / "models/controlnet" / CONTROLNET_NAME).symlink_to(cached_checkpoint("sd15-controlnet"))
    (base / "models/diffusion_models" / FLUX_UNET_NAME).symlink_to(cached_flux_file("flux"))
    (base / "models/diffusion_models" / CHROMA_UNET_NAME).symlink_to(cached_flux_file("chroma"))
    (base / "models/diffusion_models" / HUNYUAN_UNET_NAME).symlink_to(cached_flux_file("hunyuan-video"))
    (base / "models/vae" / HUNYUAN_VAE_NAME).symlink_to(cached_flux_file("hunyuan-tae"))
    (base / "models/text_encoders" / FLUX_CLIP_NAME).symlink_to(cached_flux_file("clip-l"))
    (base / "models/vae" / FLUX_VAE_NAME).symlink_to(cached_flux_file("flux-ae"))
    (base / "models/diffusion_models" / WAN_UNET_NAME).symlink_to(cached_velocity_file("wan"))
    (base / "models/checkpoints" / SD35_CHECKPOINT_NAME).symlink_to(cached_velocity_file("sd35"))
    # --base-directory also moves custom_nodes/, so the pack is linked in here.
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
    write_test_png(base / "input" / INPUT_IMAGE_NAME)
    write_test_video(base / "input" / INPUT_VIDEO_NAME)
    return base


class ComfyServer:
    def __init__(self, process: subprocess.Popen, url: str, base_dir: Path, log_path: Path):
        self.process = process
        self.url = url
        self.base_dir = base_dir
        self.input_dir = base_dir / "input"
        self.output_dir = base_dir / "output"
        self.log_path = log_path
        self.client_id = uuid.uuid4().hex
        self.startup_seconds = None
        self._http = requests.Session()
        self._object_info = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def object_info(self, node_class: str | None = None) -> dict:
        """All node definitions (fetched once), or one node's definition."""
        if node_class is not None:
            return self._get(f"/object_info/{node_class}")[node_class]
        if self._object_info is None:
            self._object_info = self._get("/object_info")
        return self._object_info

    def queue(self, prompt: dict) -> str:
        """POST a prompt (API format); returns its id or raises ComfyServerError if it does not validate."""
        r = self._http.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=30)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200:
            raise ComfyServerError(f"prompt rejected (HTTP {r.status_code}): {format_validation_error(body) or r.text}", body)
        return body["prompt_id"]

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Queue a prompt, wait for it, and return its outputs ({node_id: {"images": [...], ...}})."""
        prompt_id = self.queue(prompt)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ComfyServerError(f"server exited (code {self.process.returncode}) while running the prompt:\n{self.log_tail()}")
            entry = self._get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                break
            if time.monotonic() > deadline:
                # Free the server for later tests: drop the prompt if queued, stop it if running.
                self._http.post(f"{self.url}/queue", json={"delete": [prompt_id]}, timeout=10)
                self._http.post(f"{self.url}/interrupt", timeout=10)
                raise ComfyServerError(f"prompt {prompt_id} not done after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            raise ComfyServerError(format_execution_error(status), status)
        return entry["outputs"]

    def output_files(self, outputs: dict) -> list[Path]:
        """Files named by a run's outputs (SaveImage, PreviewImage, ...), as local paths."""
        roots = {"output": self.output_dir, "temp": self.base_dir / "temp", "input": self.input_dir}
        return [roots[item["type"]] / item.get("subfolder", "") / item["filename"]
                for node_out in outputs.values() for items in node_out.values() if isinstance(items, list)
                for item in items if isinstance(item, dict) and item.get("type") in roots and "filename" in item]

    def _get(self, path: str):
        r = self._http.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r.json()


def format_validation_error(body: dict) -> str:
    """The text of a /prompt 400 answer: the top error plus each node's errors."""
    lines = []
    error = body.get("error")
    if isinstance(error, dict):
        lines.append(": ".join(x for x in (error.get("message"), error.get("details")) if x))
    elif error:
        lines.append(str(error))
    for node_id, node in (body.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            detail = ": ".join(x for x in (e.get("message"), e.get("details")) if x)
            lines.append(f"node {node_id} ({node.get('class_type')}): {detail}")
    return "\n".join(lines)


def format_execution_error(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            tb = "".join(data.get("traceback", [])[-3:]).rstrip()
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}")
        if kind == "execution_interrupted":
            return f"prompt interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"prompt failed: {status}"


def start_server(base_dir, extra_args=(), timeout: float = STARTUP_TIMEOUT) -> ComfyServer:
    """Prepare BASE_DIR, start ComfyUI on a free loopback port and wait until it answers."""
    base = prepare_base_dir(base_dir)
    port = free_port()
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    cmd = [python, str(comfy_path() / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
           # The pack needs no API nodes; skipping them saves seconds at start-up.
           "--disable-api-nodes", *extra_args]
    log_path = base / "comfyui.log"
    started = time.monotonic()
    # One thread unless told otherwise: the test graphs are tiny, and with the cores
    # shared (parallel test runs) OpenMP barriers made each op ~40x slower.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=base, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    server = ComfyServer(process, f"http://127.0.0.1:{port}", base, log_path)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {process.returncode} at start-up; log {log_path}:\n{server.log_tail()}")
            try:
                if requests.get(f"{server.url}/system_stats", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; log {log_path}:\n{server.log_tail()}")
            time.sleep(0.2)
    except BaseException:
        stop_server(server)
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def stop_server(server: ComfyServer, grace: float = 10.0) -> None:
    server._http.close()
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("comfy-server"))
    try:
        yield server
    finally:
        stop_server(server)
