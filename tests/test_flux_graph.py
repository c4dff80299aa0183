"""Plain Flux.1 [dev] graphs of core nodes through the real server, on the generated Flux files.

The graphs are the ones a Flux user builds (ComfyUI's Flux dev examples): Load Diffusion Model
``flux1-dev.safetensors``, DualCLIPLoader ``flux`` (``t5xxl_fp16`` + ``clip_l``), Load VAE ``ae``,
CLIP Text Encode, FluxGuidance, Empty SD3 Latent Image, KSampler at cfg 1 or SamplerCustomAdvanced with
BasicGuider and ModelSamplingFlux, VAE Decode, Save Image. ``shrink_for_tests`` swaps what
tests/workflow_api.py documents (file names, the text encoders, steps and size), nothing else: the
same swap the shipped Flux workflow gets in test_workflows.py and test_frontend.py (``overrides_for_tests``,
tests/workflow_runs.py).

They fail when ComfyUI does not detect the files as Flux (the loaders raise, or the log lacks
``model_type FLUX``), when a core Flux node does not accept what the loaders give, and when the prompt
or the Flux guidance does not reach the model (the image does not change).
"""
import numpy as np
import pytest

from comfy_server import FLUX_CLIP_NAME, FLUX_UNET_NAME, FLUX_VAE_NAME
from workflow_runs import overrides_for_tests, run_image, shrunk

SIZE = 64  # shrink_for_tests' size
PROMPT = "a red fox sitting in the snow, photograph"


def flux_loaders() -> dict:
    """The three Flux.1 [dev] loaders as ComfyUI's Flux examples set them."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                         "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    }


def ksampler_graph(text: str = PROMPT, guidance: float = 3.5, seed: int = 1) -> dict:
    """Text to image with KSampler at cfg 1 (the negative is then not evaluated), as in ComfyUI's Flux example."""
    return {
        **flux_loaders(),
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": text}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": guidance}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ""}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "seed": seed, "steps": 20, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "flux_plain"}},
    }


def custom_sampler_graph() -> dict:
    """Image to image with SamplerCustomAdvanced, BasicGuider and ModelSamplingFlux, from a VAE-encoded photo:
    the route of a PnP graph's source image."""
    return {
        **flux_loaders(),
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "7": {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["3", 0]}},
        "8": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["1", 0], "max_shift": 1.15, "base_shift": 0.5,
                                                            "width": 1024, "height": 1024}},
        "9": {"class_type": "BasicGuider", "inputs": {"model": ["8", 0], "conditioning": ["5", 0]}},
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "12": {"class_type": "BasicScheduler", "inputs": {"model": ["8", 0], "scheduler": "simple", "steps": 20,
                                                          "denoise": 0.75}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["10", 0], "guider": ["9", 0],
                                                                 "sampler": ["11", 0], "sigmas": ["12", 0],
                                                                 "latent_image": ["7", 0]}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["3", 0]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "flux_custom"}},
    }


def test_the_swap_touches_only_file_names_text_encoders_steps_and_size():
    assert overrides_for_tests(ksampler_graph()) == {
        "1": {"unet_name": FLUX_UNET_NAME},
        "2": {"clip_name1": FLUX_CLIP_NAME, "clip_name2": FLUX_CLIP_NAME, "type": "sd3"},
        "3": {"vae_name": FLUX_VAE_NAME},
        "7": {"width": SIZE, "height": SIZE},
        "8": {"steps": 2},
    }


@pytest.fixture(scope="module")
def base_image(comfy_server):
    """The plain graph's image, run once for the tests below."""
    return run_image(comfy_server, shrunk(ksampler_graph()))


def test_plain_flux_graph_runs_on_the_detected_flux_model(comfy_server, base_image):
    image = base_image
    assert image.shape == (SIZE, SIZE, 3)
    assert "model_type FLUX" in comfy_server.log_text(), "the diffusion model was not loaded as Flux"
    assert image.std() > 0.02, "a flat image"


def test_prompt_and_flux_guidance_reach_the_model(comfy_server, base_image):
    """Same seed; another prompt, and FluxGuidance 5 instead of 3.5, each change the image visibly
    (measured: 0.09 and 0.09 of the pixel range on average; another seed 0.22)."""
    base = base_image
    other_prompt = run_image(comfy_server, shrunk(ksampler_graph(text="a blue teapot on a wooden table")))
    other_guidance = run_image(comfy_server, shrunk(ksampler_graph(guidance=5.0)))
    other_seed = run_image(comfy_server, shrunk(ksampler_graph(seed=2)))
    for name, image in (("prompt", other_prompt), ("guidance", other_guidance), ("seed", other_seed)):
        change = np.abs(image - base).mean()
        assert change > 0.01, f"changing the {name} moved pixels by only {change:.4f} on average"


def test_official_custom_sampler_graph_from_a_vae_encoded_image(comfy_server):
    prompt = shrunk(custom_sampler_graph())
    assert prompt["8"]["inputs"]["width"] == SIZE  # ModelSamplingFlux's shift follows the test size
    image = run_image(comfy_server, prompt)
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 0.02
