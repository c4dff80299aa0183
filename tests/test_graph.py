"""The PnP graph end to end through the real server, on the generated SD 1.5 checkpoint: PnP Apply
Feature Injection with a stock KSamplerAdvanced, and its error off the bank's schedule. The PnP Sampler
graph (Load Image, VAE Encode, PnP DDIM Inversion, PnP Capture Features, PnP Sampler, VAE Decode, Save
Image) is the shipped pnp-basic workflow, which test_workflows.py runs (``test_workflow_runs``)."""
import pytest

from comfy_server import ComfyServerError
from workflow_runs import GRAPH_STEPS as STEPS, decode_and_save, pnp_graph


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
    assert f"The sampler runs {STEPS + 2} steps but the bank was made with {STEPS}: set `steps` to {STEPS}." \
        in str(err.value)
    assert "Sample with the same steps and scheduler as PnP DDIM Inversion" in str(err.value)
