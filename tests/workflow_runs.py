"""The shipped workflows (workflows/*.json) and hand-built PnP graphs, run through the real server
for the tests (tests/comfy_server.py): what test_workflows.py, test_frontend.py, test_flux_graph.py,
test_graph.py and test_soak.py share.

``shrunk`` makes a prompt fast on the generated test models (``overrides_for_tests``: file names,
steps and sizes, the Flux text-encoder swap; tests/workflow_api.py's ``shrink_for_tests``).

conftest.py exposes the session fixture ``workflow_runs``: each shipped workflow runs through the server
once, on first use, and every test that asserts on a run reads that one run (its prompt, outputs and
saved images). The Flux workflows' runs also hold the same prompt with injection off (``inject`` 0), run
just before it: it shares every node but the sampling with the workflow's prompt, which the server then
takes from its cache. The masked workflows' runs (SD 1.5 and KV-Edit on Flux) first run their prompt with checks
added on its own nodes (``with_mask_checks``), from which the server then answers the workflow's prompt. Other
runs of variants (a knob changed to show what it does) are the tests' own.

The server keeps the outputs of the latest prompt's nodes (and drops the others'), so a run queues the
workflow's own prompt last (the bank workflow: its run 2): test_frontend.py queues the same prompt from the
page right after the run, and the server answers it from that cache.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from comfy_server import (CHECKPOINT_NAME, CHROMA_UNET_NAME, CONTROLNET_NAME, FLUX_CLIP_NAME, FLUX_UNET_NAME,
                          FLUX_VAE_NAME, HUNYUAN_UNET_NAME, HUNYUAN_VAE_NAME, INPUT_IMAGE_NAME, INPUT_VIDEO_NAME,
                          SD35_CHECKPOINT_NAME, WAN_UNET_NAME)
from flux_files import FLUX_TEST_LAYERS
from workflow_api import apply_overrides, shrink_for_tests, to_api

WORKFLOW_DIR = Path(__file__).resolve().parents[1] / "workflows"
EXPECTED = ["pnp-basic", "pnp-chroma", "pnp-controlnet", "pnp-expert", "pnp-fast", "pnp-flowedit-flux", "pnp-flux",
            "pnp-flux-advanced", "pnp-flux-fireflow", "pnp-flux-kv-edit", "pnp-hires", "pnp-hunyuan-video",
            "pnp-masked", "pnp-multi-prompt", "pnp-qwen-image-edit", "pnp-save-load-bank", "pnp-sd35-edit",
            "pnp-wan-video-edit"]
BANK_WORKFLOW = "pnp-save-load-bank"
FLUX_WORKFLOW = "pnp-flux"
FLUX_ADVANCED_WORKFLOW = "pnp-flux-advanced"  # the same edit through SamplerCustomAdvanced
FIREFLOW_WORKFLOW = "pnp-flux-fireflow"
KV_EDIT_WORKFLOW = "pnp-flux-kv-edit"  # a regional edit on Flux: the KV-Edit nodes, the mask on the inversion
CHROMA_WORKFLOW = "pnp-chroma"  # the PnP Flux nodes on Chroma, with the layers by analogy
HUNYUAN_WORKFLOW = "pnp-hunyuan-video"  # the PnP Flux nodes on HunyuanVideo: a clip in, a clip out
FLUX_WORKFLOWS = (FLUX_WORKFLOW, FLUX_ADVANCED_WORKFLOW, FIREFLOW_WORKFLOW, KV_EDIT_WORKFLOW, CHROMA_WORKFLOW,
                  HUNYUAN_WORKFLOW)
MASKED_WORKFLOW = "pnp-masked"  # a regional edit: PnP Sampler's mask input
MASKED_WORKFLOWS = (MASKED_WORKFLOW, KV_EDIT_WORKFLOW)  # runs with with_mask_checks; other Flux ones with inject 0
# The velocity edits (nodes/velocity.py), run with with_edit_checks: FlowEdit on Flux.1 (the test Flux files), FlowEdit
# on SD3.5 and UniEdit-Flow on Wan 2.1 (tests/velocity_files.py).
FLOWEDIT_FLUX_WORKFLOW = "pnp-flowedit-flux"
SD35_WORKFLOW = "pnp-sd35-edit"
WAN_WORKFLOW = "pnp-wan-video-edit"
VELOCITY_WORKFLOWS = (FLOWEDIT_FLUX_WORKFLOW, SD35_WORKFLOW, WAN_WORKFLOW)
# FlowEdit on Qwen-Image: no Qwen-Image file the host's loaders detect fits a test (tests/velocity_files.py says why),
# so the server does not run it: its graph runs in process (tests/graph_in_process.py) on the host's Qwen-Image class.
QWEN_WORKFLOW = "pnp-qwen-image-edit"
IN_PROCESS_WORKFLOWS = (QWEN_WORKFLOW,)
# The source prompt's official scale of FlowEdit on each FlowEdit workflow's model: FLUX_exp.yaml line 8 on Flux.1 dev,
# SD3_exp.yaml line 8 on SD3 (and by analogy on Qwen-Image). The reconstruction check sets the target's to it.
SOURCE_SCALE = {FLOWEDIT_FLUX_WORKFLOW: 1.5, SD35_WORKFLOW: 3.5, QWEN_WORKFLOW: 3.5}
RUN_1_GROUP = "Run 1"  # group titles of the save/load workflow, as its note explains them
RUN_2_GROUP = "Run 2"
RUN_TIMEOUT = 300


def load(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


# PnP Flux/Chroma/HunyuanVideo Inversion's steps in the tests: the fewest that keep injected and plain steps (2 of 3 injected).
# Each step of the RF-Solver costs two evaluations of the test Flux (0.69 B parameters, about 1 s each on a CPU).
FLUX_TEST_STEPS = 3
# On the test Chroma (tests/flux_files.py) each evaluation costs about 3.6 s on a CPU core, 2.5 s of it its
# approximator (5 layers 5120 wide over the 344 rows of the modulation table, whatever the image): one step, injected
# (6 evaluations with the plain run; 2 steps would be 12).
CHROMA_TEST_STEPS = 1
# The test HunyuanVideo (width 128, the real 20 + 40 blocks) on the test clip (3 latent frames of 8x8: 48 video tokens
# and 77 text tokens) costs about 0.17 s per evaluation on a CPU core: 4 steps, 1 injected (the shipped 2 of 25).
HUNYUAN_TEST_STEPS = 4
# The velocity edits' steps in the tests. FlowEdit on the test Flux (about 1 s per evaluation): 2 steps, both edited
# (n_max -1: round(24 x 2 / 28) = 2), 4 evaluations per run. On the test SD3.5 and Wan 2.1 (a few hundredths of a
# second per evaluation): 4 steps; FlowEdit edits 3 of them (round(33 x 4 / 50)), UniEdit-Flow inverts and edits 2
# (floor(0.6 x 4)).
VELOCITY_TEST_STEPS = 4
FLOWEDIT_FLUX_TEST_STEPS = 2


def overrides_for_tests(prompt: dict) -> dict:
    """What the tests change in a shipped prompt: the test files, steps and sizes (``shrink_for_tests``)."""
    return shrink_for_tests(prompt, checkpoint=CHECKPOINT_NAME, controlnet=CONTROLNET_NAME, image=INPUT_IMAGE_NAME,
                            flux_unet=FLUX_UNET_NAME, flux_text_encoder=FLUX_CLIP_NAME, flux_vae=FLUX_VAE_NAME,
                            flux_layers=FLUX_TEST_LAYERS, flux_steps=FLUX_TEST_STEPS, chroma_unet=CHROMA_UNET_NAME,
                            chroma_steps=CHROMA_TEST_STEPS, video=INPUT_VIDEO_NAME, hunyuan_unet=HUNYUAN_UNET_NAME,
                            hunyuan_vae=HUNYUAN_VAE_NAME, hunyuan_steps=HUNYUAN_TEST_STEPS, wan_unet=WAN_UNET_NAME,
                            sd35_checkpoint=SD35_CHECKPOINT_NAME, velocity_steps=VELOCITY_TEST_STEPS,
                            flux_velocity_steps=FLOWEDIT_FLUX_TEST_STEPS)


def shrunk(prompt: dict) -> dict:
    return apply_overrides(prompt, overrides_for_tests(prompt))


SAVE_TYPES = ("SaveImage", "SaveVideo")  # the shipped workflows' outputs


def image_outputs(outputs: dict) -> list:
    return [item for node_out in outputs.values() for item in node_out.get("images", [])]


def read_image(path) -> np.ndarray:
    """A saved image as floats in [0, 1], [H, W, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_video(path) -> tuple[np.ndarray, float]:
    """A saved video's frames as floats in [0, 1], [T, H, W, 3], and its frame rate."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames).astype(np.float32) / 255.0, float(stream.average_rate)


def read_latent(path) -> np.ndarray:
    """A latent that Save Latent wrote (its ``latent_tensor``), as float32 [B, C, H, W]."""
    return load_file(str(path))["latent_tensor"].astype(np.float32)


def run_image(comfy_server, prompt: dict) -> np.ndarray:
    """Run the prompt; its one saved image as floats in [0, 1], [H, W, 3]."""
    outputs = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    (path,) = comfy_server.output_files(outputs)
    return read_image(path)


def group_members(workflow: dict, title_prefix: str) -> set:
    """Ids of the nodes inside the group whose title starts with `title_prefix` (by position, as the UI does)."""
    (group,) = [g for g in workflow["groups"] if g["title"].startswith(title_prefix)]
    x, y, w, h = group["bounding"]
    return {n["id"] for n in workflow["nodes"]
            if x <= n["pos"][0] and n["pos"][0] + n["size"][0] <= x + w and y <= n["pos"][1] and n["pos"][1] + n["size"][1] <= y + h}


def run_2_of_the_bank_workflow(workflow: dict, bank_file: str) -> dict:
    """The shipped file with the steps its note gives for later runs: mute run 1, un-mute run 2, pick the bank."""
    workflow = json.loads(json.dumps(workflow))
    run_1, run_2 = group_members(workflow, RUN_1_GROUP), group_members(workflow, RUN_2_GROUP)
    for node in workflow["nodes"]:
        if node["id"] in run_1:
            node["mode"] = 2
        if node["id"] in run_2:
            node["mode"] = 0
        if node["type"] == "PnPLoadFeatureBank":
            node["widgets_values"][0] = bank_file
    return workflow


def saved_bank(comfy_server, outputs: dict) -> Path:
    """The bank file that PnP Save Feature Bank wrote in a run (named in its text output)."""
    (entry,) = [out for out in outputs.values() if "text" in out]
    return comfy_server.output_dir / entry["text"][0]


# --- each shipped workflow, run once --------------------------------------------------------------

@dataclass
class WorkflowRun:
    """One run of a shipped workflow through the server: the shrunk API prompt and its outputs.
    The bank workflow runs as its note says: run 1 saves a bank, which is staged in input/ as
    ``bank_file``; run 2 (``second_prompt``, ``second_outputs``) loads it. A Flux workflow's run (not KV-Edit's)
    also holds ``plain_prompt`` (``injection_off(prompt)``) and its outputs and files; a masked workflow's
    run holds ``check_prompt`` (``with_mask_checks(prompt)``) and its outputs, and ``check_files``: the file
    that each of the check's Save Image and Save Latent nodes wrote, by node id."""
    name: str
    prompt: dict
    outputs: dict
    files: list
    second_prompt: dict | None = None
    second_outputs: dict | None = None
    bank: Path | None = None
    bank_file: str | None = None
    plain_prompt: dict | None = None
    plain_outputs: dict | None = None
    plain_files: list | None = None
    check_prompt: dict | None = None
    check_outputs: dict | None = None
    check_files: dict | None = None
    edit_files: dict | None = None
    _images: dict = field(default_factory=dict, repr=False)

    def image(self) -> np.ndarray:
        """The run's one saved image as floats in [0, 1], [H, W, 3] (fails if it saved several or none)."""
        if "one" not in self._images:
            (path,) = self.files
            self._images["one"] = read_image(path)
        return self._images["one"]

    def check_image(self, save_id: str) -> np.ndarray:
        """The image that `save_id` (``CHECK_SOURCE``, ``CHECK_COMPOSITE``, ``CHECK_MASK``) saved in ``check_prompt``."""
        if save_id not in self._images:
            self._images[save_id] = read_image(self.check_files[save_id])
        return self._images[save_id]

    def check_latent(self, save_id: str) -> np.ndarray:
        """The latent that `save_id` (``CHECK_SOURCE_LATENT``, ``CHECK_LATENT``) saved in ``check_prompt``."""
        return read_latent(self.check_files[save_id])

    def edit_images(self, save_id: str) -> np.ndarray:
        """The images that `save_id` (``CHECK_EDIT_SOURCE``, ``CHECK_EDIT``, ``CHECK_RECONSTRUCTION``) saved in a
        velocity workflow's ``check_prompt`` (``with_edit_checks``), in order, as floats in [0, 1], [N, H, W, 3]: one
        for an image, one per frame for a clip."""
        if save_id not in self._images:
            self._images[save_id] = np.stack([read_image(path) for path in sorted(self.edit_files[save_id])])
        return self._images[save_id]

    def edit_latent(self, save_id: str) -> np.ndarray:
        """The latent that `save_id` (``CHECK_EDIT_SOURCE_LATENT``, ``CHECK_EDIT_LATENT``,
        ``CHECK_RECONSTRUCTION_LATENT``) saved in a velocity workflow's ``check_prompt``."""
        (path,) = self.edit_files[save_id]
        return read_latent(path)

    def plain_image(self) -> np.ndarray:
        """The one image that ``plain_prompt`` saved (Flux workflows), as ``image``."""
        if "plain" not in self._images:
            (path,) = self.plain_files
            self._images["plain"] = read_image(path)
        return self._images["plain"]


def injection_off(prompt: dict) -> dict:
    """A copy of a Flux workflow's prompt with ``inject`` 0 on the nodes that take the bank (PnP Flux/Chroma/HunyuanVideo
    Sampler and its FireFlow twin, PnP Flux/Chroma/HunyuanVideo Apply Feature Injection): plain sampling of the inverted source."""
    prompt = json.loads(json.dumps(prompt))
    nodes = [n for n in prompt.values() if isinstance(n["inputs"].get("inject"), int)]
    assert nodes, "no node with an inject input"
    for node in nodes:
        node["inputs"]["inject"] = 0
    return prompt


# with_mask_checks's Save Image nodes: the source's VAE round trip, the workflow's latent with the source put
# back outside the mask by ComfyUI's own Latent Composite (Masked), and the mask the workflow made; its Save Latent
# nodes: the source latent and the sampled latent, as they are.
CHECK_SOURCE, CHECK_COMPOSITE, CHECK_MASK = "check_source_save", "check_composite_save", "check_mask_save"
CHECK_SOURCE_LATENT, CHECK_LATENT = "check_source_latent_save", "check_latent_save"
CHECK_SAVES = (CHECK_SOURCE, CHECK_COMPOSITE, CHECK_MASK, CHECK_SOURCE_LATENT, CHECK_LATENT)
MASKED_SAMPLERS = ("PnPSampler", "PnPFluxKVEditSampler")  # KV-Edit's mask is its inversion's, which the bank carries


def edit_mask(prompt: dict, sampler_id: str):
    """The link of the mask that the masked workflow's sampler edits under: its own ``mask`` input, or for KV-Edit
    the mask input of the inversion that made its bank."""
    inputs = prompt[sampler_id]["inputs"]
    return inputs["mask"] if "mask" in inputs else prompt[inputs["feature_bank"][0]]["inputs"]["mask"]


def with_mask_checks(prompt: dict) -> dict:
    """A masked workflow's prompt with five more outputs (``CHECK_SAVES``) on its own nodes: VAE Decode of the
    source latent (VAE Encode's), VAE Decode of Latent Composite (Masked) of the sampler's latent onto the source
    latent through the edit's mask (``edit_mask``), the mask as an image, and Save Latent of the source latent and
    of the sampler's. Every node of the workflow's prompt is in it, unchanged, so the server then answers the
    workflow's prompt from its cache."""
    prompt = json.loads(json.dumps(prompt))
    (sampler_id,) = [k for k, n in prompt.items() if n["class_type"] in MASKED_SAMPLERS]
    (encode_id,) = [k for k, n in prompt.items() if n["class_type"] == "VAEEncode"]
    mask, vae = edit_mask(prompt, sampler_id), prompt[encode_id]["inputs"]["vae"]

    def decode_and_save(node_id, samples, prefix):
        prompt[f"{node_id}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}}
        prompt[node_id] = {"class_type": "SaveImage", "inputs": {"images": [f"{node_id}_decode", 0],
                                                                   "filename_prefix": prefix}}
    decode_and_save(CHECK_SOURCE, [encode_id, 0], "pnp-check-source")
    prompt["check_composite"] = {"class_type": "LatentCompositeMasked", "inputs": {
        "destination": [encode_id, 0], "source": [sampler_id, 0], "x": 0, "y": 0, "resize_source": False, "mask": mask}}
    decode_and_save(CHECK_COMPOSITE, ["check_composite", 0], "pnp-check-composite")
    prompt["check_mask_image"] = {"class_type": "MaskToImage", "inputs": {"mask": mask}}
    prompt[CHECK_MASK] = {"class_type": "SaveImage", "inputs": {"images": ["check_mask_image", 0],
                                                               "filename_prefix": "pnp-check-mask"}}
    for save_id, samples, prefix in ((CHECK_SOURCE_LATENT, [encode_id, 0], "latents/pnp-check-source"),
                                     (CHECK_LATENT, [sampler_id, 0], "latents/pnp-check-sampled")):
        prompt[save_id] = {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": prefix}}
    return prompt


# with_edit_checks's saves: the source's VAE round trip, the edit (the workflow's own VAE Decode) as images (a clip's
# frames one by one, before the video's compression), and the reconstruction's image; Save Latent of the source latent
# (VAE Encode's), of the edit's latent and of the reconstruction's.
CHECK_EDIT_SOURCE, CHECK_EDIT = "check_edit_source_save", "check_edit_save"
CHECK_RECONSTRUCTION = "check_reconstruction_save"
CHECK_EDIT_SOURCE_LATENT, CHECK_EDIT_LATENT = "check_edit_source_latent_save", "check_edit_latent_save"
CHECK_RECONSTRUCTION_LATENT = "check_reconstruction_latent_save"
EDIT_CHECK_SAVES = (CHECK_EDIT_SOURCE, CHECK_EDIT, CHECK_RECONSTRUCTION, CHECK_EDIT_SOURCE_LATENT, CHECK_EDIT_LATENT,
                    CHECK_RECONSTRUCTION_LATENT)
EDIT_NODES = ("PnPFlowEdit", "PnPUniEdit")  # the one-node velocity edits of the shipped workflows
RECONSTRUCTION = "check_reconstruction"  # the edit node's copy that reconstructs the source


def reconstruction(edit: dict, source_scale: float | None) -> dict:
    """The edit node (API format) set up to give back its source, as the workflow's note tells the user to check:
    FlowEdit with the source prompt as its target (``positive`` linked to what ``source_prompt`` is) and the target's
    scale at the source's (`source_scale`); UniEdit-Flow with the inversion prompt as its source and target prompts
    too (one prompt throughout)."""
    node = json.loads(json.dumps(edit))
    inputs = node["inputs"]
    if node["class_type"] == "PnPFlowEdit":
        inputs["positive"] = inputs["source_prompt"]
        inputs["target_scale"] = source_scale
    else:
        inputs["source_prompt"] = inputs["positive"] = inputs["inversion_prompt"]
    return node


def with_edit_checks(prompt: dict, source_scale: float | None = None) -> dict:
    """A velocity workflow's prompt with the outputs ``EDIT_CHECK_SAVES`` added on its own nodes: the source latent
    (VAE Encode's) decoded and saved, the edit's latent and the source latent saved (Save Latent), the workflow's own
    VAE Decode of the edit saved as images, and the edit node's ``reconstruction`` (`source_scale`: FlowEdit's
    official source scale for the model) with its latent and image saved. Every node of the workflow's prompt is in it,
    unchanged, so the server then answers the workflow's prompt from its cache."""
    prompt = json.loads(json.dumps(prompt))
    (edit_id,) = [k for k, n in prompt.items() if n["class_type"] in EDIT_NODES]
    (encode_id,) = [k for k, n in prompt.items() if n["class_type"] == "VAEEncode"]
    (decode_id,) = [k for k, n in prompt.items() if n["class_type"] == "VAEDecode"]
    vae = prompt[encode_id]["inputs"]["vae"]
    prompt[RECONSTRUCTION] = reconstruction(prompt[edit_id], source_scale)

    def save_image(save_id, images, prefix):
        prompt[save_id] = {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}

    def save_latent(save_id, samples, prefix):
        prompt[save_id] = {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": prefix}}
    for save_id, samples, prefix in ((CHECK_EDIT_SOURCE, [encode_id, 0], "pnp-check-edit-source"),
                                     (CHECK_RECONSTRUCTION, [RECONSTRUCTION, 0], "pnp-check-reconstruction")):
        prompt[f"{save_id}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}}
        save_image(save_id, [f"{save_id}_decode", 0], prefix)
    save_image(CHECK_EDIT, [decode_id, 0], "pnp-check-edit")
    save_latent(CHECK_EDIT_SOURCE_LATENT, [encode_id, 0], "latents/pnp-check-edit-source")
    save_latent(CHECK_EDIT_LATENT, [edit_id, 0], "latents/pnp-check-edit")
    save_latent(CHECK_RECONSTRUCTION_LATENT, [RECONSTRUCTION, 0], "latents/pnp-check-reconstruction")
    return prompt


class WorkflowRuns:
    """Runs each shipped workflow through the server on first use and keeps the run. A run that
    failed is not retried: every later test on that workflow fails with the same error."""

    def __init__(self, comfy_server):
        self.server = comfy_server
        self._runs: dict[str, WorkflowRun | Exception] = {}

    def prompt(self, name: str) -> dict:
        """The shipped workflow as the server runs it in the tests (API format, shrunk)."""
        return shrunk(to_api(load(name), self.server.object_info()))

    def __getitem__(self, name: str) -> WorkflowRun:
        if name not in self._runs:
            try:
                self._runs[name] = self._run(name)
            except Exception as e:  # kept, and raised again for every test on this run
                self._runs[name] = e
        run = self._runs[name]
        if isinstance(run, Exception):
            raise run
        return run

    def _run(self, name: str) -> WorkflowRun:
        prompt = self.prompt(name)
        variants = {}
        # Before the workflow's own prompt, which stays the server's latest.
        if name in FLUX_WORKFLOWS and name not in MASKED_WORKFLOWS:
            plain_prompt = injection_off(prompt)
            plain_outputs = self.server.run(plain_prompt, timeout=RUN_TIMEOUT)
            variants = dict(plain_prompt=plain_prompt, plain_outputs=plain_outputs,
                            plain_files=self.server.output_files(plain_outputs))
        if name in MASKED_WORKFLOWS:  # a superset of the workflow's prompt: the workflow's own then runs from the cache
            check_prompt = with_mask_checks(prompt)
            check_outputs = self.server.run(check_prompt, timeout=RUN_TIMEOUT)
            check_files = {}
            for save_id in CHECK_SAVES:
                (check_files[save_id],) = self.server.output_files({save_id: check_outputs[save_id]})
            variants = dict(check_prompt=check_prompt, check_outputs=check_outputs, check_files=check_files)
        if name in VELOCITY_WORKFLOWS:  # a superset of the workflow's prompt, as the masked workflows'
            check_prompt = with_edit_checks(prompt, SOURCE_SCALE.get(name))
            check_outputs = self.server.run(check_prompt, timeout=RUN_TIMEOUT)
            edit_files = {save_id: self.server.output_files({save_id: check_outputs[save_id]})
                          for save_id in EDIT_CHECK_SAVES}
            variants = dict(check_prompt=check_prompt, check_outputs=check_outputs, edit_files=edit_files)
        outputs = self.server.run(prompt, timeout=RUN_TIMEOUT)
        run = WorkflowRun(name, prompt, outputs, self.server.output_files(outputs), **variants)
        if name == BANK_WORKFLOW:
            run.bank = saved_bank(self.server, outputs)
            run.bank_file = f"pnp-test-{run.bank.name}"
            shutil.copy(run.bank, self.server.input_dir / run.bank_file)  # what the note tells the user to do
            run.second_prompt = shrunk(to_api(run_2_of_the_bank_workflow(load(name), run.bank_file),
                                              self.server.object_info()))
            run.second_outputs = self.server.run(run.second_prompt, timeout=RUN_TIMEOUT)
        return run


@pytest.fixture(scope="session")
def workflow_runs(comfy_server):
    return WorkflowRuns(comfy_server)


# --- hand-built PnP graphs (test_graph.py, test_soak.py) -------------------------------------------

GRAPH_STEPS = 8


def pnp_graph(sampler_nodes: dict, inversion_steps: int = GRAPH_STEPS, steps: int = GRAPH_STEPS) -> dict:
    """Load Image -> VAE Encode -> PnP DDIM Inversion -> PnP Capture Features -> (sampler_nodes)."""
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "image": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGE_NAME}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["image", 0], "vae": ["ckpt", 2]}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "target": {"class_type": "CLIPTextEncode", "inputs": {"text": "a watercolor painting", "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode",
                     "inputs": {"text": "ugly, blurry, black, low res, unrealistic", "clip": ["ckpt", 1]}},
        "invert": {"class_type": "PnPInversion", "inputs": {
            "model": ["ckpt", 0], "latent": ["encode", 0], "conditioning": ["empty", 0], "steps": steps,
            "inversion_steps": inversion_steps, "scheduler": "ddim_uniform"}},
        "capture": {"class_type": "PnPCaptureFeatures", "inputs": {
            "model": ["ckpt", 0], "trajectory": ["invert", 0], "feature_steps": 0.8, "attention_steps": 0.5,
            "layers": "auto"}},
    }
    graph.update(sampler_nodes)
    return graph


def decode_and_save(latent_ref, prefix):
    return {
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": latent_ref, "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }

