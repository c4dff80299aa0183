"""The shipped example workflows (workflows/*.json, UI format) through the real server.

Each file is converted to API format with the server's own node definitions and run on the generated
test models; only file names, steps and the image size are shrunk (``shrink_for_tests``), everything
else is what a user gets. The Flux workflow also gets the text-encoder swap and the layers that
tests/flux_files.py explains (no T5-XXL on a test machine; the test model has 2 of Flux.1's 38 single blocks); the
Chroma workflow the Load CLIP swap and its test Chroma, on which its layers (by analogy) run as shipped; the
HunyuanVideo workflow its test model (the real block counts: its layers run as shipped), the test CLIP-L in place
of llava-llama-3, a tiny video VAE and a 9-frame test clip. The velocity-edit workflows (FlowEdit on Flux.1 and SD3.5,
UniEdit-Flow on Wan 2.1) run on tests/velocity_files.py's files (and the Flux ones), their `steps` shrunk; the
Qwen-Image one, whose family no test file can stand for, runs in process on the host's Qwen-Image class
(tests/graph_in_process.py).
Each file runs once (the session fixture ``workflow_runs`` of tests/workflow_runs.py); the tests here
assert on that run. The Flux workflows' runs hold the variant their tests need (injection off, inject 0),
run by ``workflow_runs`` while the server still has the workflow's models and inversion in its cache; the masked
workflows' runs (pnp-masked, pnp-flux-kv-edit) hold their check prompt (``with_mask_checks``).
"""
import copy

import numpy as np
import pytest

from comfy_server import (CHROMA_UNET_NAME, FLUX_CLIP_NAME, FLUX_UNET_NAME, FLUX_VAE_NAME, HUNYUAN_UNET_NAME,
                          HUNYUAN_VAE_NAME, INPUT_IMAGE_NAME, INPUT_VIDEO_FPS, INPUT_VIDEO_NAME, PACK_PYTHON_MODULE,
                          SD35_CHECKPOINT_NAME, WAN_UNET_NAME, write_test_png)
from flux_files import cached_flux_file, clip_frames
from workflow_api import ANALOGY_LAYERS, NOTE_TYPES, UI_ONLY_TYPES, ConversionError, notes, to_api, widget_values
from workflow_runs import (BANK_WORKFLOW, CHECK_COMPOSITE, CHECK_LATENT, CHECK_MASK, CHECK_SOURCE, CHECK_SOURCE_LATENT,
                           CHROMA_WORKFLOW, EXPECTED, FIREFLOW_WORKFLOW, FLUX_ADVANCED_WORKFLOW, FLUX_WORKFLOW,
                           FLUX_WORKFLOWS, HUNYUAN_WORKFLOW, KV_EDIT_WORKFLOW, MASKED_WORKFLOW, SAVE_TYPES, WORKFLOW_DIR,
                           image_outputs, load, read_video, shrunk)
from workflow_runs import (CHECK_EDIT, CHECK_EDIT_LATENT, CHECK_EDIT_SOURCE, CHECK_EDIT_SOURCE_LATENT,
                           CHECK_RECONSTRUCTION, CHECK_RECONSTRUCTION_LATENT, FLOWEDIT_FLUX_TEST_STEPS,
                           FLOWEDIT_FLUX_WORKFLOW, IN_PROCESS_WORKFLOWS, QWEN_WORKFLOW, RECONSTRUCTION, SD35_WORKFLOW,
                           SOURCE_SCALE, VELOCITY_TEST_STEPS, WAN_WORKFLOW, with_edit_checks)

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
# What a Wan 2.1 T2V 1.3B user loads (ComfyUI's Wan example), a Qwen-Image user (ComfyUI's Qwen-Image example, with
# its ModelSamplingAuraFlow shift 3.1) and an SD3.5 user (ComfyUI's SD3.5 example: the checkpoint with its text
# encoders inside).
SHIPPED_WAN_FILES = {"UNETLoader": {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors", "weight_dtype": "default"},
                     "CLIPLoader": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"},
                     "VAELoader": {"vae_name": "wan_2.1_vae.safetensors"}}
SHIPPED_QWEN_FILES = {"UNETLoader": {"unet_name": "qwen_image_fp8_e4m3fn.safetensors", "weight_dtype": "default"},
                      "CLIPLoader": {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "type": "qwen_image"},
                      "VAELoader": {"vae_name": "qwen_image_vae.safetensors"}, "ModelSamplingAuraFlow": {"shift": 3.1}}
SHIPPED_SD35_FILES = {"CheckpointLoaderSimple": {"ckpt_name": "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"}}
SHIPPED_FILES = {CHROMA_WORKFLOW: SHIPPED_CHROMA_FILES, HUNYUAN_WORKFLOW: SHIPPED_HUNYUAN_FILES,
                 WAN_WORKFLOW: SHIPPED_WAN_FILES, QWEN_WORKFLOW: SHIPPED_QWEN_FILES, SD35_WORKFLOW: SHIPPED_SD35_FILES}
FLUX_SIZE = 1024
HUNYUAN_SIZE, HUNYUAN_FRAMES = 480, 77
# Resize's width and height: the official examples' sizes (FlowEdit's 1024x1024 images; UniEdit-Flow's Wan demo clips,
# 864x480 at 16 fps; Qwen-Image's square 1328x1328), and 81 frames (4k + 1, 5 s at Wan's 16 fps) for Wan.
SIZES = {HUNYUAN_WORKFLOW: (HUNYUAN_SIZE, HUNYUAN_SIZE), WAN_WORKFLOW: (864, 480), QWEN_WORKFLOW: (1328, 1328)}
FRAMES = {HUNYUAN_WORKFLOW: HUNYUAN_FRAMES, WAN_WORKFLOW: 81}
# PnP FlowEdit as shipped: every knob at its official value (-1 where the node resolves it for the model: steps, n_max
# and both scales), n_min 0 and n_avg 1 (FLUX_exp.yaml / SD3_exp.yaml lines 6-11), the yaml's seed (line 12).
FLOWEDIT_SEEDS = {FLOWEDIT_FLUX_WORKFLOW: 10, SD35_WORKFLOW: 42, QWEN_WORKFLOW: 42}


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
         FLUX_ADVANCED_WORKFLOW: ("inject", "FluxGuidance", "PnP Flux/Chroma/HunyuanVideo Noise", "RF-Solver Sampler", "latent_image",
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
                            "structure vs prompt", "empty Source prompt", "pads the prompts to 256", "first 77",
                            "4k + 1", "480x480", "frame rate", "hunyuan_video_t2v_720p_bf16", "llava_llama3",
                            "type hunyuan_video", "hunyuan_video_vae_bf16", "19.9 GiB"),
         WAN_WORKFLOW: ("steps -1 = 15", "alpha 0.6", "omega 5", "scale -1 = 1", "rule auto", "shift of 3",
                        "demo_wan_video_edit.py lines 22-27", "no classifier-free guidance", "Structure vs edit",
                        "0.8 and 25 steps", "first 81", "4k + 1", "864x480", "frame rate",
                        "Inversion prompt stays empty",
                        "Check (reconstruct the source)", "wan2.1_t2v_1.3B_fp16", "umt5_xxl_fp8_e4m3fn_scaled",
                        "type wan", "wan_2.1_vae"),
         FLOWEDIT_FLUX_WORKFLOW: ("steps -1 = 28", "n_max -1 = 24", "n_min 0", "n_avg 1", "source_scale -1 = 1.5",
                                  "target_scale -1 = 5.5", "seed 10", "FLUX_exp.yaml", "Structure vs edit",
                                  "Check (reconstruct the source)", "target_scale to 1.5", "flux1-dev", "t5xxl",
                                  "type flux", "ae.safetensors"),
         SD35_WORKFLOW: ("steps -1 = 50", "n_max -1 = 33", "n_min 0", "n_avg 1", "source_scale -1 = 3.5",
                         "target_scale -1 = 13.5", "seed 42", "SD3_exp.yaml", "shift of 3", "Negative prompt is empty",
                         "Structure vs edit", "Check (reconstruct the source)", "target_scale to 3.5",
                         "sd3.5_medium_incl_clips_t5xxlfp8scaled"),
         QWEN_WORKFLOW: ("no official FlowEdit code for Qwen-Image", "by analogy", "steps -1 = 50", "n_max -1 = 33",
                         "n_min 0", "n_avg 1", "source_scale -1 = 3.5", "target_scale -1 = 13.5", "seed 42",
                         "ModelSamplingAuraFlow", "shift 3.1", "Structure vs edit", "Check (reconstruct the source)",
                         "target_scale to 3.5", "qwen_image_fp8_e4m3fn", "qwen_2.5_vl_7b_fp8_scaled",
                         "type qwen_image", "qwen_image_vae", "1328x1328")}


@pytest.mark.parametrize("name", EXPECTED)
def test_each_has_a_note_explaining_the_knobs(name):
    texts = notes(load(name))
    assert texts, "no Note node"
    text = "\n".join(texts)
    if name in ("pnp-basic", FLUX_WORKFLOW, FIREFLOW_WORKFLOW):  # the basic workflows say how to check an inversion
        assert "Check (reconstruct the source)" in text
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
        if node["type"] == "CheckpointLoaderSimple" and name != SD35_WORKFLOW:
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
            size = FLUX_SIZE if name in (*FLUX_WORKFLOWS, FLOWEDIT_FLUX_WORKFLOW, SD35_WORKFLOW) else 512
            assert (values["width"], values["height"]) == SIZES.get(name, (size, size))
        if node["type"] == "ImageFromBatch":  # 4k + 1 frames: the official keeps 77 of jeep.mp4's 80; Wan's 81
            assert (values["batch_index"], values["length"]) == (0, FRAMES[name])
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
        if node["type"] == "PnPFluxSampler":  # the official values, written out (auto would give the same)
            expected = {HUNYUAN_WORKFLOW: (6.0, 2), FIREFLOW_WORKFLOW: (2.0, 1)}.get(name, (5.0, 20))
            assert (values["guidance"], values["inject"]) == expected
        if node["type"] == "PnPFluxFireFlowInversion":  # FireFlow's README.md lines 168-175
            assert (values["steps"], values["keep_steps"], values["guidance"], values["strategy"], values["scheduler"],
                    values["custom_layers"]) == (8, 1, 1.0, "replace_v", "official", "")
        assert node["type"] != "PnPFluxFireFlowSampler", "a shipped workflow uses a deprecated node"
        if node["type"] == "PnPFluxApplyInjection":
            assert values["inject"] == 20
        if node["type"] == "FluxGuidance":
            assert values["guidance"] == 5.0
        if node["type"] == "PnPFluxKVEditInversion":  # KV-Edit's demo, gradio_kv_edit.py lines 298, 314-315
            assert (values["steps"], values["skip_steps"], values["guidance"], values["scheduler"]) == \
                (28, 4, 1.5, "official")
        if node["type"] == "PnPFluxKVEditSampler":  # gradio_kv_edit.py lines 316-317
            assert (values["guidance"], values["attn_scale"]) == (5.5, 1.0)
        if node["type"] == "PnPFlowEdit":
            assert (values["steps"], values["n_max"], values["n_min"], values["n_avg"], values["source_scale"],
                    values["target_scale"], values["seed"]) == (-1, -1, 0, 1, -1, -1, FLOWEDIT_SEEDS[name])
        if node["type"] == "PnPUniEdit":  # demo_wan_video_edit.py lines 24-27; scale -1: guidance 1 (lines 75, 95)
            assert (values["steps"], values["alpha"], values["omega"], values["scale"], values["rule"]) == \
                (-1, 0.6, 5.0, -1, "auto")
    for node in prompt.values():
        if node["class_type"] == "PnPInversion":
            assert prompt_text(prompt, node["inputs"]["conditioning"]) == "", "the inversion prompt is the empty prompt"
        if node["class_type"] in ("PnPSampler", "CFGGuider", "KSampler"):
            assert prompt_text(prompt, node["inputs"]["negative"]) == NEGATIVE
        if node["class_type"] == "PnPUniEdit":  # the demo inverts with prompt "" (line 70)
            assert prompt_text(prompt, node["inputs"]["inversion_prompt"]) == ""
        if node["class_type"] == "PnPFlowEdit" and name != FLOWEDIT_FLUX_WORKFLOW:  # CFG with "" (run_script.py l. 74)
            assert prompt_text(prompt, node["inputs"]["negative"]) == ""


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
    VAE Encode -> PnP Flux/Chroma/HunyuanVideo Inversion -> PnP Flux/Chroma/HunyuanVideo Sampler (both on the model as loaded: ``official`` is the video edit's
    own schedule) -> VAE Decode -> Create Video at the clip's frame rate -> Save Video. The prompts are the official
    example's (scripts/run_jeep.sh): an empty source prompt and "A pink porsche", of unequal llava-llama-3 token counts
    (the pack pads both to 256 and masks the padding, as the official code). The test run's
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
    assert (source, target) == ("", "A pink porsche") and hunyuan_video_tokens(source) < hunyuan_video_tokens(target)

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
    # Measured (4 steps, 1 injected, the empty source prompt): 0.011 to 0.022 per frame (0.012 to 0.023 with the
    # source prompt "A white jeep"; 0.018 to 0.028 at 3 of 4 steps injected).
    per_frame = np.abs(edited - plain).mean(axis=(1, 2, 3))
    assert (per_frame > 0.003).all(), f"injection moved some frames by only {per_frame.min():.4f} on average"
    assert np.abs(edited - source).mean() > 0.02, "the edit left the clip as it was"


# --- the velocity edits: FlowEdit on Flux.1, SD3.5 and Qwen-Image, UniEdit-Flow on Wan 2.1 ----------------------------

def test_the_velocity_notes_give_the_values_the_nodes_resolve():
    """The numbers the notes give for the knobs left at -1 are the engine's official ones: FlowEdit's FLUX_exp.yaml
    (28 steps, n_max 24, 1.5 / 5.5) and SD3_exp.yaml (50, 33, 3.5 / 13.5, shift 3), UniEdit-Flow's Wan demo (15 steps,
    alpha 0.6, omega 5, guidance 1, shift 3), and no official FlowEdit schedule for Qwen-Image (the model's own)."""
    from comfyui_pnp.pnp_injection.velocity import flowedit, uniedit
    official = lambda s: (s.steps, s.n_max, s.n_min, s.n_avg, s.source_scale, s.target_scale)  # noqa: E731
    assert official(flowedit.FLUX) == (28, 24, 0, 1, 1.5, 5.5)
    assert official(flowedit.SD3) == (50, 33, 0, 1, 3.5, 13.5)
    assert (uniedit.STEPS, uniedit.ALPHA, uniedit.OMEGA, uniedit.GUIDANCE) == (15, 0.6, 5.0, 1.0)
    assert flowedit.SCHEDULES["flux1"] == "flux" and flowedit.SCHEDULES["sd3"] == uniedit.SCHEDULES["wan"] == "shift3"
    assert "qwen_image" not in flowedit.SCHEDULES
    assert {SOURCE_SCALE[FLOWEDIT_FLUX_WORKFLOW], SOURCE_SCALE[SD35_WORKFLOW], SOURCE_SCALE[QWEN_WORKFLOW]} == \
        {flowedit.FLUX.source_scale, flowedit.SD3.source_scale}


FLOWEDIT_WORKFLOWS = (FLOWEDIT_FLUX_WORKFLOW, SD35_WORKFLOW, QWEN_WORKFLOW)
# The node that gives PnP FlowEdit its model, as ComfyUI's examples load each family.
FLOWEDIT_MODEL = {FLOWEDIT_FLUX_WORKFLOW: "UNETLoader", SD35_WORKFLOW: "CheckpointLoaderSimple",
                  QWEN_WORKFLOW: "ModelSamplingAuraFlow"}


@pytest.mark.parametrize("name", FLOWEDIT_WORKFLOWS)
def test_the_flowedit_workflows_edit_the_source_image_on_the_model_as_loaded(name, comfy_server):
    """Load Image -> Resize -> VAE Encode -> PnP FlowEdit -> VAE Decode (the same VAE) -> Save Image, PnP FlowEdit on
    the model as ComfyUI's examples load it (Flux.1: Load Diffusion Model; SD3.5: Load Checkpoint; Qwen-Image:
    ModelSamplingAuraFlow on Load Diffusion Model) with two different prompts of one text encoder, and the negative
    prompt where the model has classifier-free guidance (not on Flux.1 dev). The test run's swaps: Flux.1's test files
    and text-encoder swap, the test SD3.5 checkpoint, Qwen-Image's loaders as shipped (it runs in process); the
    steps shrunk, every other knob as shipped."""
    prompt = to_api(load(name), comfy_server.object_info())
    kinds = {n["class_type"]: n for n in prompt.values()}
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    edit = kinds["PnPFlowEdit"]["inputs"]
    chain = [edit["latent"]]
    for key in ("pixels", "image"):
        chain.append(prompt[chain[-1][0]]["inputs"][key])
    assert [kind(ref) for ref in chain] == ["VAEEncode", "ImageScale", "LoadImage"]
    decode = kinds["VAEDecode"]["inputs"]
    assert kind(decode["samples"]) == "PnPFlowEdit" and decode["vae"] == prompt[chain[0][0]]["inputs"]["vae"]
    assert kind(kinds["SaveImage"]["inputs"]["images"]) == "VAEDecode"
    assert kind(edit["model"]) == FLOWEDIT_MODEL[name]
    if name == QWEN_WORKFLOW:
        assert kind(prompt[edit["model"][0]]["inputs"]["model"]) == "UNETLoader"
    texts = [prompt[edit[key][0]] for key in ("source_prompt", "positive", "negative") if key in edit]
    assert all(node["class_type"] == "CLIPTextEncode" for node in texts)
    assert len({str(node["inputs"]["clip"]) for node in texts}) == 1
    assert texts[0]["inputs"]["text"] != texts[1]["inputs"]["text"]
    assert ("negative" in edit) == (name != FLOWEDIT_FLUX_WORKFLOW)

    files = {n["class_type"]: n["inputs"] for n in shrunk(prompt).values()}
    if name == FLOWEDIT_FLUX_WORKFLOW:
        assert (files["UNETLoader"]["unet_name"], files["VAELoader"]["vae_name"]) == (FLUX_UNET_NAME, FLUX_VAE_NAME)
        assert (files["DualCLIPLoader"]["clip_name1"], files["DualCLIPLoader"]["type"]) == (FLUX_CLIP_NAME, "sd3")
    if name == SD35_WORKFLOW:
        assert files["CheckpointLoaderSimple"]["ckpt_name"] == SD35_CHECKPOINT_NAME
    if name == QWEN_WORKFLOW:
        assert all(files[k] == {**files[k], **v} for k, v in SHIPPED_QWEN_FILES.items())
    steps = FLOWEDIT_FLUX_TEST_STEPS if name == FLOWEDIT_FLUX_WORKFLOW else VELOCITY_TEST_STEPS
    assert {k: files["PnPFlowEdit"][k] for k in ("steps", "n_max", "source_scale", "target_scale")} == \
        {"steps": steps, "n_max": -1, "source_scale": -1, "target_scale": -1}


def test_the_wan_workflow_loads_wan_and_a_clip(comfy_server):
    """pnp-wan-video-edit: Wan 2.1's loaders; Load Video -> Get Video Components -> Image From Batch -> Resize -> VAE
    Encode -> PnP UniEdit-Flow (on the model as loaded: its official schedule is the demo's shift 3) -> VAE Decode ->
    Create Video at the clip's frame rate -> Save Video; the inversion prompt empty, the source and target prompts
    different. The test run's swaps: the test Wan, the test TAEHV as its VAE, the test CLIP-L (Load CLIP type sd3), the
    test clip, 4 steps; the frame cap and the other knobs as shipped."""
    prompt = to_api(load(WAN_WORKFLOW), comfy_server.object_info())
    kinds = {n["class_type"]: n for n in prompt.values()}
    kind = lambda ref: prompt[ref[0]]["class_type"]  # noqa: E731
    assert set(SHIPPED_WAN_FILES) <= set(kinds) and not {"ModelSamplingSD3", "DualCLIPLoader"} & set(kinds)
    edit = kinds["PnPUniEdit"]["inputs"]
    assert kind(edit["model"]) == "UNETLoader" and "negative" not in edit  # guidance 1: no negative prompt
    chain = [edit["latent"]]  # VAE Encode <- Resize <- Image From Batch <- Get Video Components <- Load Video
    for key in ("pixels", "image", "image", "video"):
        chain.append(prompt[chain[-1][0]]["inputs"][key])
    assert [kind(ref) for ref in chain] == ["VAEEncode", "ImageScale", "ImageFromBatch", "GetVideoComponents",
                                            "LoadVideo"]
    decode = kinds["VAEDecode"]["inputs"]
    assert kind(decode["samples"]) == "PnPUniEdit" and decode["vae"] == prompt[chain[0][0]]["inputs"]["vae"]
    create = kinds["CreateVideo"]["inputs"]
    assert kind(create["images"]) == "VAEDecode" and create["fps"] == [chain[3][0], 2], "the clip's own frame rate"
    assert kind(kinds["SaveVideo"]["inputs"]["video"]) == "CreateVideo"
    texts = [prompt[edit[key][0]]["inputs"]["text"] for key in ("inversion_prompt", "source_prompt", "positive")]
    assert texts[0] == "" and texts[1] != texts[2] and "" not in texts[1:]

    files = {n["class_type"]: n["inputs"] for n in shrunk(prompt).values()}
    assert (files["UNETLoader"]["unet_name"], files["VAELoader"]["vae_name"]) == (WAN_UNET_NAME, HUNYUAN_VAE_NAME)
    assert (files["CLIPLoader"]["clip_name"], files["CLIPLoader"]["type"]) == (FLUX_CLIP_NAME, "sd3")
    assert files["LoadVideo"]["file"] == INPUT_VIDEO_NAME and files["ImageFromBatch"]["length"] == FRAMES[WAN_WORKFLOW]
    assert {k: files["PnPUniEdit"][k] for k in ("steps", "alpha", "omega", "scale", "rule")} == \
        {"steps": VELOCITY_TEST_STEPS, "alpha": 0.6, "omega": 5.0, "scale": -1, "rule": "auto"}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of latents a and b, relative to b's mean magnitude."""
    return float(np.abs(a - b).mean() / np.abs(b).mean())


def check_flowedit(edit_latent, source_latent, rec_latent, edit_image, source_image, rec_image, rounding):
    """What every FlowEdit workflow promises (the run's arrays, from the server or in process)."""
    assert edit_latent.shape == source_latent.shape == rec_latent.shape
    assert np.isfinite(edit_latent).all() and np.isfinite(edit_image).all()
    assert edit_image.shape == source_image.shape == rec_image.shape == (1, 64, 64, 3)
    change = relative(edit_latent, source_latent)
    assert change > 0.2, f"the edit moved the latent by only {change:.3f} of its mean magnitude"
    pixels = np.abs(edit_image - source_image).mean()
    assert pixels > 0.05, f"the edit moved pixels by only {pixels:.4f} on average"
    back = np.abs(rec_latent - source_latent).max() / np.abs(source_latent).max()
    assert back < 1e-5, f"with the source prompt as the target, the latent left the source by {back:.2e} (relative)"
    assert np.abs(rec_image - source_image).max() < rounding
    return change, pixels, back


@pytest.mark.parametrize("name", [FLOWEDIT_FLUX_WORKFLOW, SD35_WORKFLOW])
def test_the_flowedit_workflow_edits_and_gives_back_the_source(name, workflow_runs):
    """The run's check prompt (``with_edit_checks``, run just before the workflow's prompt, whose nodes it holds
    unchanged) saves the source latent (VAE Encode's) and its VAE round trip, the edit's latent and image, and the
    edit node once more with the note's reconstruction check: the source prompt as the target, target_scale at the
    source's official scale. The workflow saves one 64x64 image, the check's edit image; the edit's latent is finite and
    far from the source latent, its image from the source's round trip; the reconstruction is the source latent to
    float rounding (the latent format's scale and shift there and back) and the round trip's pixels to 8-bit rounding.
    Fails if the edit changes nothing, or FlowEdit's step (the noise shared by both prompts, z_tar = z + z_src - x_src,
    the skipped steps, the scales of each prompt) departs from the official one so that equal velocities move it."""
    run = workflow_runs[name]
    assert all(run.check_prompt[node_id] == node for node_id, node in run.prompt.items())
    (edit,) = [n for n in run.prompt.values() if n["class_type"] == "PnPFlowEdit"]
    assert run.check_prompt[RECONSTRUCTION]["inputs"] == {**edit["inputs"], "positive": edit["inputs"]["source_prompt"],
                                                          "target_scale": SOURCE_SCALE[name]}
    image = run.image()
    assert image.shape == (64, 64, 3) and np.array_equal(image, run.edit_images(CHECK_EDIT)[0])
    # Measured: pnp-flowedit-flux (2 steps, both edited) latent 0.78, pixels 0.154, reconstruction 5.9e-7 (the images
    # 1/255 apart at most); pnp-sd35-edit (4 steps, 3 edited) latent 3.6, pixels 0.31, reconstruction 1.2e-6.
    check_flowedit(run.edit_latent(CHECK_EDIT_LATENT), run.edit_latent(CHECK_EDIT_SOURCE_LATENT),
                   run.edit_latent(CHECK_RECONSTRUCTION_LATENT), run.edit_images(CHECK_EDIT),
                   run.edit_images(CHECK_EDIT_SOURCE), run.edit_images(CHECK_RECONSTRUCTION), rounding=1.5 / 255)


def test_the_wan_workflow_edits_each_frame_and_gives_back_the_source(workflow_runs):
    """pnp-wan-video-edit saves an MP4 with the clip's 9 frames (3 latent frames through the video VAE) at the clip's
    frame rate. Its check prompt (``with_edit_checks``) saves the source latent and its round trip, the edit's latent
    and frames (before the video's compression), and PnP UniEdit-Flow once more with the note's check: the inversion
    prompt as the source and target prompts too. The edit's latent is finite and far from the source's, every frame
    moved; the reconstruction comes back close to the source latent, within a fifth of the edit's distance. Fails if
    the video nodes drop or add frames or lose the frame rate, the edit changes nothing, or Uni-Edit does not walk back
    the way Uni-Inv went (another start, schedule or share of the steps)."""
    run = workflow_runs[WAN_WORKFLOW]
    assert all(run.check_prompt[node_id] == node for node_id, node in run.prompt.items())
    (path,) = run.files
    assert path.suffix == ".mp4" and path.parent.name == "video"
    video, fps = read_video(path)
    assert video.shape == (9, 64, 64, 3) and fps == INPUT_VIDEO_FPS
    source, edit = run.edit_latent(CHECK_EDIT_SOURCE_LATENT), run.edit_latent(CHECK_EDIT_LATENT)
    back = run.edit_latent(CHECK_RECONSTRUCTION_LATENT)
    assert source.shape == edit.shape == back.shape == (1, 16, 3, 8, 8) and np.isfinite(edit).all()
    frames, source_frames = run.edit_images(CHECK_EDIT), run.edit_images(CHECK_EDIT_SOURCE)
    assert frames.shape == source_frames.shape == (9, 64, 64, 3)
    # Measured (4 steps, 2 inverted and edited): latent 0.83 of its mean magnitude; frames 0.091 to 0.12 mean pixel
    # value; the reconstruction 0.038 (frames 0.0066).
    change = relative(edit, source)
    assert change > 0.2, f"the edit moved the latent by only {change:.3f} of its mean magnitude"
    per_frame = np.abs(frames - source_frames).mean(axis=(1, 2, 3))
    assert (per_frame > 0.03).all(), f"the edit moved some frames by only {per_frame.min():.4f} on average"
    error = relative(back, source)
    assert error < 0.2 * change, f"the reconstruction is {error:.3f} from the source, the edit {change:.3f}"


def test_the_qwen_image_workflow_edits_and_gives_back_the_source_in_process(comfy_server, folders):
    """pnp-qwen-image-edit, in process (tests/graph_in_process.py): the shipped graph with the checks of
    ``with_edit_checks``, each node through its own class as the server runs it, but the three loaders: the host's
    Qwen-Image class shrunk (tests/velocity_files.py: the host's loader fixes widths no test file can afford), the test
    CLIP-L (Load CLIP type stable_diffusion: the 768-wide context that model takes) and the test TAEHV (16 channels, a
    one-frame latent, as Qwen-Image's VAE gives). PnP FlowEdit takes SD3's official values by analogy on it (no official
    code for Qwen-Image); the same checks as the server's FlowEdit workflows. Fails as they do."""
    import comfy.sd
    import comfy.utils
    from comfyui_pnp.pnp_injection.velocity import flowedit
    from graph_in_process import run_in_process
    from velocity_files import qwen_image_patcher
    write_test_png(folders[1] / INPUT_IMAGE_NAME)
    prompt = shrunk(to_api(load(QWEN_WORKFLOW), comfy_server.object_info()))
    model = qwen_image_patcher()
    assert flowedit.official(model) == flowedit.SD3
    given = {"UNETLoader": (model,),
             "CLIPLoader": (comfy.sd.load_clip([str(cached_flux_file("clip-l"))],
                                               clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION),),
             "VAELoader": (comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(cached_flux_file("hunyuan-tae")))),)}
    saved = run_in_process(with_edit_checks(prompt, SOURCE_SCALE[QWEN_WORKFLOW]), given)
    (save_id,) = [k for k, n in prompt.items() if n["class_type"] == "SaveImage"]
    images = {k: saved[k]["images"].float().numpy()
              for k in (save_id, CHECK_EDIT, CHECK_EDIT_SOURCE, CHECK_RECONSTRUCTION)}
    latents = {k: saved[k]["samples"]["samples"].float().numpy()
               for k in (CHECK_EDIT_LATENT, CHECK_EDIT_SOURCE_LATENT, CHECK_RECONSTRUCTION_LATENT)}
    assert latents[CHECK_EDIT_LATENT].shape == (1, 16, 1, 8, 8)  # Qwen-Image's one-frame latent
    assert np.array_equal(images[save_id], images[CHECK_EDIT])
    # Measured (4 steps, 3 edited): latent 3.0, pixels 0.23, reconstruction 2.5e-6 (images 2.1e-6 apart: no 8-bit
    # rounding in process).
    check_flowedit(latents[CHECK_EDIT_LATENT], latents[CHECK_EDIT_SOURCE_LATENT], latents[CHECK_RECONSTRUCTION_LATENT],
                   images[CHECK_EDIT], images[CHECK_EDIT_SOURCE], images[CHECK_RECONSTRUCTION], rounding=1e-4)


def test_the_hires_pass_uses_the_unpatched_model(comfy_server):
    prompt = to_api(load("pnp-hires"), comfy_server.object_info())
    (ksampler,) = [n for n in prompt.values() if n["class_type"] == "KSampler"]
    assert prompt[ksampler["inputs"]["model"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert prompt[ksampler["inputs"]["latent_image"][0]]["class_type"] == "LatentUpscaleBy"
    assert 0.3 <= ksampler["inputs"]["denoise"] <= 0.6


@pytest.mark.parametrize("name, inversion_type, sampler_type", [
    (FLUX_WORKFLOW, "PnPFluxInversion", "PnPFluxSampler"),
    (FIREFLOW_WORKFLOW, "PnPFluxFireFlowInversion", "PnPFluxSampler"),
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
    if name == CHROMA_WORKFLOW:  # the engine took the loaded file for Chroma (PnP Flux/Chroma/HunyuanVideo Inversion logs it)
        assert "Chroma has no distilled guidance" in workflow_runs.server.log_text()


def test_the_advanced_flux_workflow_is_the_flux_workflow(workflow_runs):
    """The SamplerCustomAdvanced route (PnP Flux/Chroma/HunyuanVideo Apply Feature Injection, PnP Flux/Chroma/HunyuanVideo Noise, RF-Solver Sampler, FluxGuidance,
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


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != BANK_WORKFLOW and n not in IN_PROCESS_WORKFLOWS])
def test_workflow_runs(name, workflow_runs):
    run = workflow_runs[name]
    saves = [node_id for node_id, node in run.prompt.items() if node["class_type"] in SAVE_TYPES]
    assert saves and all(len(run.outputs.get(s, {}).get("images", [])) == 1 for s in saves)
    assert all(f.is_file() for f in run.files)
