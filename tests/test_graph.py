"""The PnP graph end to end through the real server, on the generated SD 1.5 checkpoint."""
import pytest

from comfy_server import CHECKPOINT_NAME, INPUT_IMAGE_NAME, ComfyServerError

STEPS = 8


def pnp_graph(sampler_nodes: dict, inversion_steps: int = STEPS) -> dict:
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
            "model": ["ckpt", 0], "latent": ["encode", 0], "conditioning": ["empty", 0], "steps": STEPS,
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


def test_pnp_sampler_graph_runs_end_to_end(comfy_server):
    graph = pnp_graph({
        "pnp": {"class_type": "PnPSampler", "inputs": {
            "model": ["ckpt", 0], "feature_bank": ["capture", 0], "positive": ["target", 0],
            "negative": ["negative", 0], "cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5,
            "sampler_name": "ddim"}},
        **decode_and_save(["pnp", 0], "pnp-sampler"),
    })
    files = comfy_server.output_files(comfy_server.run(graph, timeout=300))
    assert len(files) == 1 and files[0].is_file()


def expert_graph(steps: int) -> dict:
    """PnP Apply Feature Injection + a stock KSamplerAdvanced from the inverted latent."""
    return pnp_graph({
        "apply": {"class_type": "PnPApplyInjection", "inputs": {
            "model": ["ckpt", 0], "feature_bank": ["capture", 0], "feature_injection": 0.8,
            "attention_injection": 0.5}},
        "sample": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["apply", 0], "add_noise": "disable", "noise_seed": 0, "steps": steps, "cfg": 7.5,
            "sampler_name": "ddim", "scheduler": "ddim_uniform", "positive": ["target", 0],
            "negative": ["negative", 0], "latent_image": ["invert", 1], "start_at_step": 0,
            "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
        **decode_and_save(["sample", 0], "pnp-expert"),
    })


def test_apply_injection_works_with_a_stock_sampler(comfy_server):
    files = comfy_server.output_files(comfy_server.run(expert_graph(STEPS), timeout=300))
    assert len(files) == 1


def test_a_sampler_off_the_banks_schedule_gets_a_clear_error(comfy_server):
    with pytest.raises(ComfyServerError) as err:
        comfy_server.run(expert_graph(STEPS + 2), timeout=300)
    assert "are not the feature bank's" in str(err.value) and "within the injection window" in str(err.value)
    assert "Sample with the same steps and scheduler as PnP DDIM Inversion" in str(err.value)
