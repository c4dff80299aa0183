"""The shipped example workflows (workflows/*.json, UI format) through the real server.

Each file is converted to API format with the server's own node definitions and run on the generated
test models; only file names, steps and the image size are shrunk (``shrink_for_tests``), everything
else is what a user gets. The Flux workflow also gets the text-encoder swap and the layers that
tests/flux_files.py explains (no T5-XXL on a test machine; the test model has 2 of Flux.1's 38 single blocks); the
Chroma workflow the Load CLIP swap and its test Chroma, on which its layers (by analogy) run as shipped; the
HunyuanVideo workflow its test model (the real block counts: its layers run as shipped), the test CLIP-L in place
of llava-llama-3, a tiny video VAE and a 9-frame test clip.
Each file runs once (the session fixture ``workflow_runs`` of tests/workflow_runs.py); the tests here
assert on that run. The Flux workflows' runs hold the variant their tests need (injection off, inject 0),
run by ``workflow_runs`` while the server still has the workflow's models and inversion in its cache; the masked
workflows' runs (pnp-masked, pnp-flux-kv-edit) hold their check prompt (``with_mask_checks``).
"""
import copy

import numpy as np
import pytest

from comfy_server import (CHROMA_UNET_NAME, FLUX_CLIP_NAME, HUNYUAN_UNET_NAME, HUNYUAN_VAE_NAME, INPUT_VIDEO_FPS,
                          INPUT_VIDEO_NAME, PACK_PYTHON_MODULE)
from flux_files import clip_frames
from workflow_api import ANALOGY_LAYERS, NOTE_TYPES, UI_ONLY_TYPES, ConversionError, notes, to_api, widget_values
from workflow_runs import (BANK_WORKFLOW, CHECK_COMPOSITE, CHECK_LATENT, CHECK_MASK, CHECK_SOURCE, CHECK_SOURCE_LATENT,
                           CHROMA_WORKFLOW, EXPECTED, FIREFLOW_WORKFLOW, FLUX_ADVANCED_WORKFLOW, FLUX_WORKFLOW,
                           FLUX_WORKFLOWS, HUNYUAN_WORKFLOW, KV_EDIT_WORKFLOW, MASKED_WORKFLOW, SAVE_TYPES, WORKFLOW_DIR,
                           image_outputs, load, read_video, shrunk)

NEGATIVE = "ugly, blurry, black, low res, unrealistic"
SHIPPED_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SHIPPED_IMAGE = "example.png"
SHIPPED_VIDEO = "example.mp4"
# What a Flux.1 [dev] user loads (ComfyUI's Flux examples), and RF-Solver-Edit's defaults (its edit.py:
# 25 steps, inject 20, guidance 5 for the target and 1 for the inversion).
SHIPPED_FLUX_FILES = {"UNETLoader": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"},
                      "DualCLIPLoader": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors",
                                         "type": "flux"},
                      "VAELoader": {"vae_name": "ae.safetensors"}}
# What a Chroma user loads (ComfyUI's Chroma template: Chroma1-HD, Load CLIP type chroma with T5-XXL, Flux.1's VAE).
SHIPPED_CHROMA_FILES = {"UNETLoader": {"unet_name": "Chroma1-HD.safetensors", "weight_dtype": "default"},
                        "CLIPLoader": {"clip_name": "t5xxl_fp16.safetensors", "type": "chroma"},
                        "VAELoader": {"vae_name": "ae.safetensors"}}
# What a HunyuanVideo user loads (ComfyUI's HunyuanVideo example), and the official video edit's run_jeep.sh: 25 steps,
# inject_step 2, embedded guidance 6 (1 for the inversion), jeep.mp4's 480x480 and the 77 of its 80 frames it keeps.
SHIPPED_HUNYUAN_FILES = {"UNETLoader": {"unet_name": "hunyuan_video_t2v_720p_bf16.safetensors", "weight_dtype": "default"},
                         "DualCLIPLoader": {"clip_name1": "clip_l.safetensors",
                                            "clip_name2": "llava_llama3_fp8_scaled.safetensors", "type": "hunyuan_video"},
                         "VAELoader": {"vae_name": "hunyuan_video_vae_bf16.safetensors"}}
SHIPPED_FILES = {CHROMA_WORKFLOW: SHIPPED_CHROMA_FILES, HUNYUAN_WORKFLOW: SHIPPED_HUNYUAN_FILES}
FLUX_SIZE = 1024
HUNYUAN_SIZE, HUNYUAN_FRAMES = 480, 77


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


KNOBS = {FLUX_WORKFLOW: ("inject", "keep_steps", "guidance", "steps", "rf-solver-edit", "rf_solver", "ModelSamplingFlux", "t5xxl"),
         FLUX_ADVANCED_WORKFLOW: ("inject", "FluxGuidance", "PnP Flux Noise", "RF-Solver Sampler", "latent_image",
                                  "ModelSamplingFlux", "t5xxl"),
         FIREFLOW_WORKFLOW: ("steps 8", "inject 1", "keep_steps", "guidance 2", "strategy", "replace_v", "add_q",
                             "steps 15", "official", "t5xxl"),
         KV_EDIT_WORKFLOW: ("steps 28", "skip_steps 4", "guidance 1.5", "guidance 5.5", "attn_scale 1", "official",
                            "Fewer skipped steps follow the prompt more", "16 MiB per background token", "32 GiB",
                            "MaskEditor", "A new mask needs a new inversion", "t5xxl"),
         CHROMA_WORKFLOW: ("inject 20", "keep_steps 20", "steps 25", "scheduler official", "rf-solver-edit (by analogy)",
                           "no official RF-Solver-Edit code", "20-37 of 38", "19-37 of 38", "no distilled guidance",
                           "`guidance` inputs", "same number of T5 tokens", "structure", "Chroma1-HD", "type chroma",
                           "t5xxl", "ae.safetensors"),
         HUNYUAN_WORKFLOW: ("inject 2", "keep_steps 2", "keep_steps 5", "guidance 6", "guidance 1", "steps 25",
                            "scheduler official", "shifted by 7", "rf_solver", "single blocks 21-39 of 40",
                            "structure vs prompt", "same number of tokens", "single.21-39:v@image", "first 77",
                            "4k + 1", "480x480", "frame rate", "hunyuan_video_t2v_720p_bf16", "llava_llama3",
                            "type hunyuan_video", "hunyuan_video_vae_bf16", "19.9 GiB")}


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
        if node["type"] == "LoadVideo":
            assert values["file"] == SHIPPED_VIDEO
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
            size = HUNYUAN_SIZE if name == HUNYUAN_WORKFLOW else FLUX_SIZE if name in FLUX_WORKFLOWS else 512
            assert (values["width"], values["height"]) == (size, size)
        if node["type"] == "ImageFromBatch":  # the official keeps 4k + 1 frames: 77 of jeep.mp4's 80
            assert (values["batch_index"], values["length"]) == (0, HUNYUAN_FRAMES)
        shipped_files = SHIPPED_FILES.get(name, SHIPPED_FLUX_FILES)
        if node["type"] in shipped_files:
            assert values == {**values, **shipped_files[node["type"]]}
        if node["type"] == "ModelSamplingFlux":  # Flux.1 dev's shift, for the image size
            assert (values["max_shift"], values["base_shift"], values["width"], values["height"]) == \
                (1.15, 0.5, FLUX_SIZE, FLUX_SIZE)
        if node["type"] == "PnPFluxInversion":  # on Chroma: the rule by analogy, and official is the model's simple
            layers, scheduler = (ANALOGY_LAYERS, "official") if name == CHROMA_WORKFLOW else ("rf-solver-edit", "simple")
            keep = 20
            if name == HUNYUAN_WORKFLOW:  # the video edit's own preset and schedule (shift 7), inject_step 2
                layers, scheduler, keep = "rf-solver-edit", "official", 2
            assert (values["steps"], values["keep_steps"], values["guidance"], values["layers"], values["solver"],
                    values["scheduler"], values["custom_layers"]) == (25, keep, 1.0, layers, "rf_solver", scheduler, "")
        if node["type"] == "PnPFluxSampler":
            expected = (6.0, 2) if name == HUNYUAN_WORKFLOW else (5.0, 20)
            assert (values["guidance"], values["inject"]) == expected
        if node["type"] == "PnPFluxFireFlowInversion":  # FireFlow's README.md lines 168-175
            assert (values["steps"], values["keep_steps"], values["guidance"], values["strategy"], values["scheduler"],
                    values["custom_layers"]) == (8, 1, 1.0, "replace_v", "official", "")
        if node["type"] == "PnPFluxFireFlowSampler":
            assert (values["guidance"], values["inject"]) == (2.0, 1)
        if node["type"] == "PnPFluxApplyInjection":
            assert values["inject"] == 20
        if node["type"] == "FluxGuidance":
            assert values["guidance"] == 5.0
        if node["type"] == "PnPFluxKVEditInversion":  # KV-Edit's demo, gradio_kv_edit.py lines 298, 314-315
            assert (values["steps"], values["skip_steps"], values["guidance"], values["scheduler"]) == \
                (28, 4, 1.5, "official")
        if node["type"] == "PnPFluxKVEditSampler":  # gradio_kv_edit.py lines 316-317
            assert (values["guidance"], values["attn_scale"]) == (5.5, 1.0)
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


def chroma_tokens(text: str) -> int:
    """The text tokens that Load CLIP type chroma gives a prompt (its T5 tokenizer: no padding)."""
    from comfy.text_encoders.pixart_t5 import PixArtTokenizer
    (tokens,) = PixArtTokenizer().tokenize_with_weights(text)["t5xxl"]
    return len(tokens)


def test_the_chroma_workflow_loads_chroma_and_words_its_prompts_alike(comfy_server):
    """pnp-chroma: Chroma's loaders; inversion and sampler on the model as loaded (``official`` is Chroma's own
    schedule: no ModelSamplingFlux); the shipped source and target prompts encode to as many T5 tokens with the
    tokenizer of Load CLIP type chroma (the layers replace all tokens and Chroma does not pad: unequal counts stop
    the sampler). The test run's swaps: the test Chroma and CLIP-L (Load CLIP type sd3), the preset as shipped."""
    prompt = to_api(load(CHROMA_WORKFLOW), comfy_server.object_info())
    kinds = {n["class_type"]: n for n in prompt.values()}
    assert set(SHIPPED_CHROMA_FILES) <= set(kinds) and not {"DualCLIPLoader", "ModelSamplingFlux"} & set(kinds)
    loader = [k for k, n in prompt.items() if n["class_type"] == "UNETLoader"]
    inversion, sampler = kinds["PnPFluxInversion"], kinds["PnPFluxSampler"]
    assert inversion["inputs"]["model"] == sampler["inputs"]["model"] == [loader[0], 0]
    assert prompt[inversion["inputs"]["latent"][0]]["class_type"] == "VAEEncode"
    source = prompt[inversion["inputs"]["conditioning"][0]]["inputs"]["text"]
    target = prompt[sampler["inputs"]["positive"][0]]["inputs"]["text"]
    assert source != target and chroma_tokens(source) == chroma_tokens(target) > 1, (source, target)

    files = {n["class_type"]: n["inputs"] for n in shrunk(prompt).values()}
    assert files["UNETLoader"]["unet_name"] == CHROMA_UNET_NAME
    assert (files["CLIPLoader"]["clip_name"], files["CLIPLoader"]["type"]) == (FLUX_CLIP_NAME, "sd3")
    assert (files["PnPFluxInversion"]["layers"], files["PnPFluxInversion"]["custom_layers"]) == (ANALOGY_LAYERS, "")


def hunyuan_video_tokens(text: str) -> int:
    """The tokens DualCLIPLoader type hunyuan_video gives a prompt's llava-llama-3 part (its tokenizer: no padding,
    the prompt inside the host's template)."""
    from comfy.text_encoders.hunyuan_video import HunyuanVideoTokenizer
    (tokens,) = HunyuanVideoTokenizer().tokenize_with_weights(text)["llama"]
    return len(tokens)


def test_the_video_workflow_loads_hunyuan_video_and_a_clip(comfy_server):
    """pnp-hunyuan-video: HunyuanVideo's loaders; Load Video -> Get Video Components -> Image From Batch -> Resize ->
    VAE Encode -> PnP Flux Inversion -> PnP Flux Sampler (both on the model as loaded: ``official`` is the video edit's
    own schedule) -> VAE Decode -> Create Video at the clip's frame rate -> Save Video. The source and target prompts
    encode to as many llava-llama-3 tokens (the layers replace all tokens and the host does not pad). The test run's
    swaps: the test HunyuanVideo, its VAE, the test CLIP-L (DualCLIPLoader type sd3), the test clip; the preset and
    the frame cap as shipped."""
    prompt = to_api(load(HUNYUAN_WORKFLOW), comfy_server.object_info())
    kinds = {n["class_type"]: n for n in prompt.values()}
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    assert set(SHIPPED_HUNYUAN_FILES) <= set(kinds) and "ModelSamplingFlux" not in kinds
    inversion, sampler = kinds["PnPFluxInversion"], kinds["PnPFluxSampler"]
    assert inversion["inputs"]["model"] == sampler["inputs"]["model"] and kind(sampler["inputs"]["model"]) == "UNETLoader"
    components = kinds["GetVideoComponents"]["inputs"]["video"]
    assert kind(components) == "LoadVideo"
    chain = [inversion["inputs"]["latent"]]  # VAE Encode <- Resize <- Image From Batch <- Get Video Components
    for key in ("pixels", "image", "image"):
        chain.append(prompt[chain[-1][0]]["inputs"][key])
    assert [kind(ref) for ref in chain] == ["VAEEncode", "ImageScale", "ImageFromBatch", "GetVideoComponents"]
    decode = kinds["VAEDecode"]["inputs"]
    assert kind(decode["samples"]) == "PnPFluxSampler" and decode["vae"] == prompt[chain[0][0]]["inputs"]["vae"]
    create = kinds["CreateVideo"]["inputs"]
    assert kind(create["images"]) == "VAEDecode" and create["fps"] == [chain[-1][0], 2], "the clip's own frame rate"
    assert kind(kinds["SaveVideo"]["inputs"]["video"]) == "CreateVideo"
    source = prompt[inversion["inputs"]["conditioning"][0]]["inputs"]["text"]
    target = prompt[sampler["inputs"]["positive"][0]]["inputs"]["text"]
    assert source != target and hunyuan_video_tokens(source) == hunyuan_video_tokens(target), (source, target)
    assert hunyuan_video_tokens("") < hunyuan_video_tokens(source)

    files = {n["class_type"]: n["inputs"] for n in shrunk(prompt).values()}
    assert (files["UNETLoader"]["unet_name"], files["VAELoader"]["vae_name"]) == (HUNYUAN_UNET_NAME, HUNYUAN_VAE_NAME)
    assert (files["DualCLIPLoader"]["clip_name1"], files["DualCLIPLoader"]["type"]) == (FLUX_CLIP_NAME, "sd3")
    assert files["LoadVideo"]["file"] == INPUT_VIDEO_NAME
    assert (files["PnPFluxInversion"]["layers"], files["PnPFluxInversion"]["custom_layers"]) == ("rf-solver-edit", "")
    assert files["ImageFromBatch"]["length"] == HUNYUAN_FRAMES


def test_the_video_workflow_edits_each_frame_of_the_clip(workflow_runs):
    """pnp-hunyuan-video saves an MP4 with the clip's frames (9: 3 latent frames through the video VAE) at the clip's
    frame rate; the same prompt with the sampler at inject 0 (run just before it) gives another clip, frame by frame.
    Fails if the video nodes drop or add frames, the frame rate is lost, or injection changes nothing."""
    run = workflow_runs[HUNYUAN_WORKFLOW]
    (inversion,) = [n for n in run.prompt.values() if n["class_type"] == "PnPFluxInversion"]
    (sampler,) = [n for n in run.prompt.values() if n["class_type"] == "PnPFluxSampler"]
    assert 0 < sampler["inputs"]["inject"] < inversion["inputs"]["steps"], "the test run has injected and plain steps"
    (path,) = run.files
    (plain_path,) = run.plain_files
    assert path.suffix == ".mp4" and path.parent.name == "video"
    edited, fps = read_video(path)
    plain, plain_fps = read_video(plain_path)
    source = clip_frames().numpy()
    assert edited.shape == plain.shape == source.shape == (9, 64, 64, 3)
    assert fps == plain_fps == INPUT_VIDEO_FPS
    # Measured (4 steps, 1 injected): 0.012 to 0.023 per frame (0.018 to 0.028 at 3 of 4 steps injected).
    per_frame = np.abs(edited - plain).mean(axis=(1, 2, 3))
    assert (per_frame > 0.003).all(), f"injection moved some frames by only {per_frame.min():.4f} on average"
    assert np.abs(edited - source).mean() > 0.02, "the edit left the clip as it was"


def test_the_hires_pass_uses_the_unpatched_model(comfy_server):
    prompt = to_api(load("pnp-hires"), comfy_server.object_info())
    (ksampler,) = [n for n in prompt.values() if n["class_type"] == "KSampler"]
    assert prompt[ksampler["inputs"]["model"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert prompt[ksampler["inputs"]["latent_image"][0]]["class_type"] == "LatentUpscaleBy"
    assert 0.3 <= ksampler["inputs"]["denoise"] <= 0.6


@pytest.mark.parametrize("name, inversion_type, sampler_type", [
    (FLUX_WORKFLOW, "PnPFluxInversion", "PnPFluxSampler"),
    (FIREFLOW_WORKFLOW, "PnPFluxFireFlowInversion", "PnPFluxFireFlowSampler"),
    (CHROMA_WORKFLOW, "PnPFluxInversion", "PnPFluxSampler")])
def test_flux_workflow_runs_and_injects(name, inversion_type, sampler_type, workflow_runs):
    """The Flux workflow runs; the same prompt with the sampler at inject 0 (plain sampling of the inverted
    source with the bank's solver; run just before it, by ``workflow_runs``) gives another image. Fails if the
    workflow does not run or injects nothing."""
    run = workflow_runs[name]
    prompt = copy.deepcopy(run.prompt)
    (sampler,) = [n for n in prompt.values() if n["class_type"] == sampler_type]
    (inversion,) = [n for n in prompt.values() if n["class_type"] == inversion_type]
    steps = inversion["inputs"]["steps"]  # one step (the test Chroma, for time) is all injected
    assert 0 < sampler["inputs"]["inject"] < steps or sampler["inputs"]["inject"] == steps == 1, \
        "the test run has injected and plain steps"
    injected = run.image()
    sampler["inputs"]["inject"] = 0
    assert run.plain_prompt == prompt, "the plain run is the workflow with its sampler at inject 0, nothing else"
    plain = run.plain_image()
    assert injected.shape == plain.shape == (64, 64, 3)
    # Measured: pnp-flux 0.014 (1 of the test model's 2 single blocks, 2 of 3 steps; 0.019 at 3 of 4);
    # pnp-flux-fireflow 0.008 (both single blocks, 1 of 3 steps); pnp-chroma 0.037 (the preset by analogy: 1 of the
    # test Chroma's 2 single blocks, its 1 step injected; 0.0026 at 1 of 2 steps).
    change = np.abs(injected - plain).mean()
    least = 0.005
    assert change > least, f"injection moved pixels by only {change:.4f} on average"
    if name == CHROMA_WORKFLOW:  # the engine took the loaded file for Chroma (PnP Flux Inversion logs it)
        assert "Chroma has no distilled guidance" in workflow_runs.server.log_text()


def test_the_advanced_flux_workflow_is_the_flux_workflow(workflow_runs):
    """The SamplerCustomAdvanced route (PnP Flux Apply Feature Injection, PnP Flux Noise, RF-Solver Sampler, FluxGuidance,
    BasicGuider) saves the image of the one-node route, pixel for pixel; at inject 0 (its run's ``plain_prompt``) it is
    another image. Fails if the inverted source entered as the latent image, or the route injects differently or not at all."""
    run = workflow_runs[FLUX_ADVANCED_WORKFLOW]
    prompt = copy.deepcopy(run.prompt)
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    (custom,) = [n for n in prompt.values() if n["class_type"] == "SamplerCustomAdvanced"]
    assert kind(custom["inputs"]["noise"]) == kind(custom["inputs"]["sigmas"]) == "PnPFluxNoise"
    assert kind(custom["inputs"]["sampler"]) == "PnPRFSolverSampler"
    assert kind(prompt[custom["inputs"]["guider"][0]]["inputs"]["model"]) == "PnPFluxApplyInjection"
    advanced = run.image()
    one_node = workflow_runs[FLUX_WORKFLOW].image()
    assert np.array_equal(advanced, one_node)
    (apply,) = [n for n in prompt.values() if n["class_type"] == "PnPFluxApplyInjection"]
    assert apply["inputs"]["inject"] > 0
    apply["inputs"]["inject"] = 0
    assert run.plain_prompt == prompt, "the plain run is the workflow with inject 0, nothing else"
    assert np.abs(run.plain_image() - advanced).mean() > 0.005


def test_the_masked_workflow_edits_inside_its_mask_and_keeps_the_source_outside(workflow_runs):
    """pnp-masked: core mask nodes make the right half white, the workflow's own Resize brings the mask to the
    source's size, and PnP Sampler takes it. Its run's check prompt (``with_mask_checks``, run just before the
    workflow's prompt, whose nodes it holds unchanged) saves the mask, the source's VAE round trip, and PnP
    Sampler's latent with the source latent put back outside the mask by ComfyUI's Latent Composite (Masked).
    The workflow's image equals that composite to 8-bit rounding: outside the mask the sampled latent is the
    source's, exactly. (The decoded pixels there are not the round trip's: the test VAE's decoder spreads every
    latent cell over its neighbours, so the edit shows faintly across the border; measured 0.063 mean on the left
    quarter, against 0.27 inside.) Inside, the image is edited. Fails if the mask does not reach the sampler, is
    ignored there, or is not the right half."""
    run = workflow_runs[MASKED_WORKFLOW]
    (sampler,) = [n for n in run.prompt.values() if n["class_type"] == "PnPSampler"]
    assert run.prompt[sampler["inputs"]["mask"][0]]["class_type"] == "ImageToMask"
    assert all(run.check_prompt[node_id] == node for node_id, node in run.prompt.items())
    mask = run.check_image(CHECK_MASK)[..., 0]
    assert mask.shape == (64, 64) and (mask[:, :32] == 0).all() and (mask[:, 32:] == 1).all(), "not the right half"
    image, source = run.image(), run.check_image(CHECK_SOURCE)
    # Measured: 2 of 12288 values 1/255 apart (the source latent through the model's latent scale and back),
    # the rest equal; with the sampler's mask disconnected, up to 1.0 apart (0.24 on average outside the mask).
    assert np.abs(image - run.check_image(CHECK_COMPOSITE)).max() < 1.5 / 255
    edit = np.abs(image - source)[:, 32:].mean()  # measured 0.27
    assert edit > 0.1, f"the edit moved pixels inside the mask by only {edit:.4f} on average"


def test_the_kv_edit_workflow_keeps_the_source_latent_outside_its_mask(workflow_runs):
    """pnp-flux-kv-edit: the mask nodes of pnp-masked (the right half white) reach PnP Flux Inversion (KV-Edit), whose
    bank PnP Flux Sampler (KV-Edit) edits; the test run inverts 3 steps and skips 1 (2 edited). Its run's check prompt
    (``with_mask_checks``, run just before the workflow's prompt, whose nodes it holds unchanged) saves the mask,
    the source latent (VAE Encode's) and the sampled latent. Outside the mask (latent columns 0-3: token columns
    0-1, none touching the mask) the sampled latent is the source latent to float rounding (the source through
    the model's latent scale and shift and back); inside it differs, and so does the saved image from the
    source's VAE round trip. The image equals the composite of the sampled latent on the source through the mask
    (Latent Composite (Masked)) to 8-bit rounding. Fails if the mask does not reach the inversion, is not the right
    half, or the edit leaks outside it or changes nothing."""
    run = workflow_runs[KV_EDIT_WORKFLOW]
    kinds = {n["class_type"]: n for n in run.prompt.values()}
    inversion, sampler = kinds["PnPFluxKVEditInversion"], kinds["PnPFluxKVEditSampler"]
    assert run.prompt[sampler["inputs"]["feature_bank"][0]] is inversion
    assert run.prompt[inversion["inputs"]["mask"][0]]["class_type"] == "ImageToMask"
    assert 0 < inversion["inputs"]["skip_steps"] < inversion["inputs"]["steps"], "the test run skips and edits steps"
    assert all(run.check_prompt[node_id] == node for node_id, node in run.prompt.items())
    mask = run.check_image(CHECK_MASK)[..., 0]
    assert mask.shape == (64, 64) and (mask[:, :32] == 0).all() and (mask[:, 32:] == 1).all(), "not the right half"
    source, sampled = run.check_latent(CHECK_SOURCE_LATENT), run.check_latent(CHECK_LATENT)
    assert source.shape == sampled.shape == (1, 16, 8, 8)
    # Measured: 115 of the 512 values outside apart by float32 rounding (4.8e-7 at most, the latent scale and shift
    # there and back), the rest equal; with the sampler's last composite left out (the edited latent everywhere), 0.69.
    scale = np.abs(source).max()
    outside = np.abs(sampled - source)[..., :4].max() / scale  # measured 5.6e-8
    assert outside < 1e-5, f"the sampled latent left the source outside the mask by {outside:.2e} (relative)"
    inside = np.abs(sampled - source)[..., 4:].mean() / np.abs(source[..., 4:]).mean()  # measured 0.71
    assert inside > 0.1, f"the edit moved the latent inside the mask by only {inside:.4f} (relative)"
    image = run.image()
    assert np.abs(image - run.check_image(CHECK_COMPOSITE)).max() < 1.5 / 255  # measured 0: the same pixels
    edit = np.abs(image - run.check_image(CHECK_SOURCE))[:, 32:].mean()  # measured 0.14 (0.028 on the left quarter)
    assert edit > 0.05, f"the edit moved pixels inside the mask by only {edit:.4f} on average"


def test_bank_workflow_captures_once_then_samples_from_the_loaded_bank(workflow_runs):
    run = workflow_runs[BANK_WORKFLOW]
    first = run.prompt
    assert {n["class_type"] for n in first.values()} >= {"PnPCaptureFeatures", "PnPSaveFeatureBank"}
    assert not {"PnPLoadFeatureBank", "SaveImage"} & {n["class_type"] for n in first.values()}, \
        "run 2 is muted in the shipped file"
    bank = run.bank
    assert bank.is_file() and bank.name.startswith("pnp_bank_") and bank.suffix == ".safetensors"

    # run 2: the bank copied into input/ (what the note tells the user to do), picked in PnP Load Feature Bank
    kinds = {n["class_type"] for n in run.second_prompt.values()}
    assert "PnPLoadFeatureBank" in kinds and not kinds & {"PnPInversion", "PnPCaptureFeatures", "PnPSaveFeatureBank"}
    assert len(image_outputs(run.second_outputs)) == 1


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != BANK_WORKFLOW])
def test_workflow_runs(name, workflow_runs):
    run = workflow_runs[name]
    saves = [node_id for node_id, node in run.prompt.items() if node["class_type"] in SAVE_TYPES]
    assert saves and all(len(run.outputs.get(s, {}).get("images", [])) == 1 for s in saves)
    assert all(f.is_file() for f in run.files)
