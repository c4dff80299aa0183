"""The shipped example workflows (workflows/*.json, UI format) through the real server.

Each file is converted to API format with the server's own node definitions and run on the generated
test models; only file names, steps and the image size are shrunk (``shrink_for_tests``), everything
else is what a user gets. The Flux workflow also gets the text-encoder swap and the layers that
tests/flux_files.py explains (no T5-XXL on a test machine; the test model has 2 of Flux.1's 38 single blocks).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import (CHECKPOINT_NAME, CONTROLNET_NAME, FLUX_CLIP_NAME, FLUX_UNET_NAME, FLUX_VAE_NAME,
                          INPUT_IMAGE_NAME, PACK_PYTHON_MODULE)
from flux_files import FLUX_TEST_LAYERS
from workflow_api import (NOTE_TYPES, UI_ONLY_TYPES, ConversionError, apply_overrides, notes, shrink_for_tests,
                          to_api, widget_values)

WORKFLOW_DIR = Path(__file__).resolve().parents[1] / "workflows"
EXPECTED = ["pnp-basic", "pnp-controlnet", "pnp-expert", "pnp-fast", "pnp-flux", "pnp-flux-advanced", "pnp-hires",
            "pnp-multi-prompt", "pnp-save-load-bank"]
NEGATIVE = "ugly, blurry, black, low res, unrealistic"
SHIPPED_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SHIPPED_IMAGE = "example.png"
BANK_WORKFLOW = "pnp-save-load-bank"
FLUX_WORKFLOW = "pnp-flux"
FLUX_ADVANCED_WORKFLOW = "pnp-flux-advanced"  # the same edit through SamplerCustomAdvanced
FLUX_WORKFLOWS = (FLUX_WORKFLOW, FLUX_ADVANCED_WORKFLOW)
# What a Flux.1 [dev] user loads (ComfyUI's Flux examples), and RF-Solver-Edit's defaults (its edit.py:
# 25 steps, inject 20, guidance 5 for the target and 1 for the inversion).
SHIPPED_FLUX_FILES = {"UNETLoader": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"},
                      "DualCLIPLoader": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors",
                                         "type": "flux"},
                      "VAELoader": {"vae_name": "ae.safetensors"}}
FLUX_SIZE = 1024
RUN_1_GROUP = "Run 1"  # group titles of the save/load workflow, as its note explains them
RUN_2_GROUP = "Run 2"


def load(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def overrides_for_tests(prompt: dict) -> dict:
    """What the tests change in a shipped prompt: the test files, steps and sizes (``shrink_for_tests``)."""
    return shrink_for_tests(prompt, checkpoint=CHECKPOINT_NAME, controlnet=CONTROLNET_NAME, image=INPUT_IMAGE_NAME,
                            flux_unet=FLUX_UNET_NAME, flux_text_encoder=FLUX_CLIP_NAME, flux_vae=FLUX_VAE_NAME,
                            flux_layers=FLUX_TEST_LAYERS)


def shrunk(prompt: dict) -> dict:
    return apply_overrides(prompt, overrides_for_tests(prompt))


def image_outputs(outputs: dict) -> list:
    return [item for node_out in outputs.values() for item in node_out.get("images", [])]


def run_image(comfy_server, prompt: dict) -> np.ndarray:
    """Run the prompt; its one saved image as floats in [0, 1], [H, W, 3]."""
    outputs = comfy_server.run(prompt, timeout=300)
    (path,) = comfy_server.output_files(outputs)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def test_the_shipped_set_is_complete():
    assert sorted(p.stem for p in WORKFLOW_DIR.glob("*.json")) == EXPECTED


def test_the_server_serves_them_as_templates(comfy_server):
    """ComfyUI lists a pack's workflows/ folder in the UI's template browser."""
    templates = comfy_server._get("/workflow_templates")
    assert sorted(templates.get("comfyui-pnp-diffusion", [])) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_only_core_nodes_and_ours(name, comfy_server):
    object_info = comfy_server.object_info()
    for node in load(name)["nodes"]:
        if node["type"] in UI_ONLY_TYPES:
            continue
        assert node["type"] in object_info, f"node {node['id']}: {node['type']} is not on the server"
        module = object_info[node["type"]]["python_module"]
        assert not module.startswith("custom_nodes.") or module == PACK_PYTHON_MODULE, \
            f"node {node['id']}: {node['type']} comes from another pack ({module})"


KNOBS = {FLUX_WORKFLOW: ("inject", "guidance", "steps", "rf-solver-edit", "rf_solver", "ModelSamplingFlux", "t5xxl"),
         FLUX_ADVANCED_WORKFLOW: ("inject", "FluxGuidance", "PnP Flux Noise", "RF-Solver Sampler", "latent_image",
                                  "ModelSamplingFlux", "t5xxl")}


@pytest.mark.parametrize("name", EXPECTED)
def test_each_has_a_note_explaining_the_knobs(name):
    texts = notes(load(name))
    assert texts, "no Note node"
    text = "\n".join(texts)
    for knob in KNOBS.get(name, ("feature_injection", "attention_injection", "cfg", "inversion_steps")):
        assert knob in text


@pytest.mark.parametrize("name", EXPECTED)
def test_widget_values_match_the_nodes_inputs(name, comfy_server):
    """Strict: one value per widget, so a node whose inputs changed since the file was saved shows up here."""
    object_info = comfy_server.object_info()
    for node in load(name)["nodes"]:
        if node["type"] not in UI_ONLY_TYPES:
            try:
                widget_values(node, object_info[node["type"]], strict=True)
            except ConversionError as e:
                pytest.fail(f"{e}\n(`PNP_RESAVE_WORKFLOWS=1 pytest tests/test_frontend.py` re-saves all the "
                            f"workflows as the UI does)")


@pytest.mark.parametrize("name", EXPECTED)
def test_shipped_values_are_the_papers(name, comfy_server):
    workflow = load(name)
    prompt = to_api(workflow, comfy_server.object_info())
    for node in workflow["nodes"]:  # muted nodes too: they are what run 2 of the bank workflow uses
        if node["type"] in NOTE_TYPES:
            continue
        values = widget_values(node, comfy_server.object_info()[node["type"]]) if node["type"] not in UI_ONLY_TYPES else {}
        if node["type"] == "CheckpointLoaderSimple":
            assert values["ckpt_name"] == SHIPPED_CHECKPOINT
        if node["type"] == "LoadImage":
            assert values["image"] == SHIPPED_IMAGE
        if node["type"] == "PnPInversion":
            expected_inversion = 50 if name == "pnp-fast" else 999
            assert (values["steps"], values["inversion_steps"], values["scheduler"]) == (50, expected_inversion, "ddim_uniform")
        if node["type"] in ("PnPSampler", "PnPApplyInjection"):
            assert (values["feature_injection"], values["attention_injection"]) == (0.8, 0.5)
        if node["type"] in ("PnPSampler", "CFGGuider"):
            assert values["cfg"] == 7.5
        if node["type"] in ("PnPSampler", "KSamplerSelect"):
            assert values["sampler_name"] == "ddim"
        if node["type"] == "PnPCaptureFeatures":
            assert (values["feature_steps"], values["attention_steps"], values["layers"]) == (0.8, 0.5, "auto")
        if node["type"] == "ImageScale":
            size = FLUX_SIZE if name in FLUX_WORKFLOWS else 512
            assert (values["width"], values["height"]) == (size, size)
        if node["type"] in SHIPPED_FLUX_FILES:
            assert values == {**values, **SHIPPED_FLUX_FILES[node["type"]]}
        if node["type"] == "ModelSamplingFlux":  # Flux.1 dev's shift, for the image size
            assert (values["max_shift"], values["base_shift"], values["width"], values["height"]) == \
                (1.15, 0.5, FLUX_SIZE, FLUX_SIZE)
        if node["type"] == "PnPFluxInversion":
            assert (values["steps"], values["inject"], values["guidance"], values["layers"], values["solver"],
                    values["scheduler"], values["custom_layers"]) == (25, 20, 1.0, "rf-solver-edit", "rf_solver", "simple", "")
        if node["type"] == "PnPFluxSampler":
            assert (values["guidance"], values["inject"]) == (5.0, 20)
        if node["type"] == "PnPFluxApplyInjection":
            assert values["inject"] == 20
        if node["type"] == "FluxGuidance":
            assert values["guidance"] == 5.0
    for node in prompt.values():
        if node["class_type"] == "PnPInversion":
            assert prompt_text(prompt, node["inputs"]["conditioning"]) == "", "the inversion prompt is the empty prompt"
        if node["class_type"] in ("PnPSampler", "CFGGuider", "KSampler"):
            assert prompt_text(prompt, node["inputs"]["negative"]) == NEGATIVE


def prompt_text(prompt: dict, ref: list) -> str:
    """The text a conditioning link carries, through Apply ControlNet."""
    node = prompt[ref[0]]
    if node["class_type"] == "ControlNetApplyAdvanced":
        return prompt_text(prompt, node["inputs"][("positive", "negative")[ref[1]]])
    assert node["class_type"] == "CLIPTextEncode", node["class_type"]
    return node["inputs"]["text"]


def test_the_expert_workflow_samples_from_the_inverted_latent_without_noise(comfy_server):
    prompt = to_api(load("pnp-expert"), comfy_server.object_info())
    (custom,) = [n for n in prompt.values() if n["class_type"] == "SamplerCustomAdvanced"]
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    assert kind(custom["inputs"]["noise"]) == "DisableNoise"
    assert kind(custom["inputs"]["sigmas"]) == "PnPSigmas"
    assert kind(custom["inputs"]["latent_image"]) == "PnPInversion" and custom["inputs"]["latent_image"][1] == 1
    assert kind(prompt[custom["inputs"]["guider"][0]]["inputs"]["model"]) == "PnPApplyInjection"


def test_the_flux_workflow_inverts_and_samples_on_one_schedule(comfy_server):
    """Inversion and sampler take the model through one ModelSamplingFlux set to the image's size."""
    prompt = to_api(load(FLUX_WORKFLOW), comfy_server.object_info())
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    (inversion,) = [n for n in prompt.values() if n["class_type"] == "PnPFluxInversion"]
    (sampler,) = [n for n in prompt.values() if n["class_type"] == "PnPFluxSampler"]
    assert inversion["inputs"]["model"] == sampler["inputs"]["model"] and kind(sampler["inputs"]["model"]) == "ModelSamplingFlux"
    assert kind(sampler["inputs"]["feature_bank"]) == "PnPFluxInversion"
    assert kind(inversion["inputs"]["latent"]) == "VAEEncode"
    (resize,) = [n for n in prompt.values() if n["class_type"] == "ImageScale"]
    schedule = prompt[sampler["inputs"]["model"][0]]["inputs"]
    assert (schedule["width"], schedule["height"]) == (resize["inputs"]["width"], resize["inputs"]["height"])


def test_the_hires_pass_uses_the_unpatched_model(comfy_server):
    prompt = to_api(load("pnp-hires"), comfy_server.object_info())
    (ksampler,) = [n for n in prompt.values() if n["class_type"] == "KSampler"]
    assert prompt[ksampler["inputs"]["model"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert prompt[ksampler["inputs"]["latent_image"][0]]["class_type"] == "LatentUpscaleBy"
    assert 0.3 <= ksampler["inputs"]["denoise"] <= 0.6


@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in (BANK_WORKFLOW, *FLUX_WORKFLOWS)])
def test_workflow_runs(name, comfy_server):
    prompt = shrunk(to_api(load(name), comfy_server.object_info()))
    outputs = comfy_server.run(prompt, timeout=300)
    saves = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    assert saves and all(len(outputs.get(s, {}).get("images", [])) == 1 for s in saves)
    assert all(f.is_file() for f in comfy_server.output_files(outputs))


def test_flux_workflow_runs_and_injects(comfy_server):
    """The Flux workflow runs; then PnP Flux Sampler at inject 0 (plain RF-Solver sampling of the inverted source,
    the inversion cached) gives another image. Fails if the workflow does not run or injects nothing."""
    prompt = shrunk(to_api(load(FLUX_WORKFLOW), comfy_server.object_info()))
    (sampler,) = [n for n in prompt.values() if n["class_type"] == "PnPFluxSampler"]
    (inversion,) = [n for n in prompt.values() if n["class_type"] == "PnPFluxInversion"]
    assert 0 < sampler["inputs"]["inject"] < inversion["inputs"]["steps"], "the test run has injected and plain steps"
    injected = run_image(comfy_server, prompt)
    sampler["inputs"]["inject"] = 0
    plain = run_image(comfy_server, prompt)
    assert injected.shape == plain.shape == (64, 64, 3)
    # Measured: 0.019 (1 of the test model's 2 single blocks, 3 of 4 steps).
    change = np.abs(injected - plain).mean()
    assert change > 0.005, f"injection moved pixels by only {change:.4f} on average"


def test_the_advanced_flux_workflow_is_the_flux_workflow(comfy_server):
    """The SamplerCustomAdvanced route (PnP Flux Apply Injection, PnP Flux Noise, RF-Solver Sampler, FluxGuidance,
    BasicGuider) saves the image of the one-node route, pixel for pixel; at inject 0 it is another image. Fails if
    the inverted source entered as the latent image, or the route injects differently or not at all."""
    prompt = shrunk(to_api(load(FLUX_ADVANCED_WORKFLOW), comfy_server.object_info()))
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    (custom,) = [n for n in prompt.values() if n["class_type"] == "SamplerCustomAdvanced"]
    assert kind(custom["inputs"]["noise"]) == kind(custom["inputs"]["sigmas"]) == "PnPFluxNoise"
    assert kind(custom["inputs"]["sampler"]) == "PnPRFSolverSampler"
    assert kind(prompt[custom["inputs"]["guider"][0]]["inputs"]["model"]) == "PnPFluxApplyInjection"
    advanced = run_image(comfy_server, prompt)
    one_node = run_image(comfy_server, shrunk(to_api(load(FLUX_WORKFLOW), comfy_server.object_info())))
    assert np.array_equal(advanced, one_node)
    (apply,) = [n for n in prompt.values() if n["class_type"] == "PnPFluxApplyInjection"]
    assert apply["inputs"]["inject"] > 0
    apply["inputs"]["inject"] = 0
    assert np.abs(run_image(comfy_server, prompt) - advanced).mean() > 0.005


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
    (entry,) = [out for out in outputs.values() if "text" in out]
    return comfy_server.output_dir / entry["text"][0]


def test_bank_workflow_captures_once_then_samples_from_the_loaded_bank(comfy_server):
    workflow = load(BANK_WORKFLOW)
    object_info = comfy_server.object_info()
    first = shrunk(to_api(workflow, object_info))
    assert {n["class_type"] for n in first.values()} >= {"PnPCaptureFeatures", "PnPSaveFeatureBank"}
    assert not {"PnPLoadFeatureBank", "SaveImage"} & {n["class_type"] for n in first.values()}, \
        "run 2 is muted in the shipped file"
    outputs = comfy_server.run(first, timeout=300)
    bank = saved_bank(comfy_server, outputs)
    assert bank.is_file() and bank.name.startswith("pnp_bank_") and bank.suffix == ".safetensors"

    name = f"pnp-test-{bank.name}"
    shutil.copy(bank, comfy_server.input_dir / name)  # what the note tells the user to do
    second = shrunk(to_api(run_2_of_the_bank_workflow(workflow, name), object_info))
    kinds = {n["class_type"] for n in second.values()}
    assert "PnPLoadFeatureBank" in kinds and not kinds & {"PnPInversion", "PnPCaptureFeatures", "PnPSaveFeatureBank"}
    outputs = comfy_server.run(second, timeout=300)
    assert len(image_outputs(outputs)) == 1
