"""The in-process test models are real ComfyUI models whose internal features matter."""
import comfy.samplers
import pytest
import torch

import harness


def denoise_once(model, arch, zero_residual_of=None):
    """One model evaluation at a mid-schedule sigma, optionally with a ResBlock's residual zeroed."""
    unet = model.model.diffusion_model
    hook = None
    if zero_residual_of is not None:
        conv = unet.output_blocks[zero_residual_of][0].out_layers[-1]
        hook = conv.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    guider = comfy.samplers.CFGGuider(model)
    cond = harness.conditioning(arch)
    guider.set_conds(cond, cond)
    guider.set_cfg(1.0)
    sigmas = torch.tensor([2.0, 0.0])

    def one_step(m, x, s, extra_args=None, callback=None, disable=None):
        sigma = s[:1].expand(x.shape[0])
        return (x - m(x, sigma, **(extra_args or {}))) / s[0]  # the model's eps: what the features drive

    try:
        with torch.no_grad():
            return guider.sample(torch.zeros(1, 4, 16, 16), harness.latent(), comfy.samplers.KSAMPLER(one_step),
                                 sigmas, disable_pbar=True, seed=0)
    finally:
        if hook:
            hook.remove()


@pytest.mark.parametrize("arch, v, block", [("sd15", False, 4), ("sd21", True, 4), ("sdxl", False, 0)])
def test_zeroing_the_injected_resblock_residual_changes_the_output(arch, v, block):
    """Fails if random weights leave internal features irrelevant (e.g. zero-initialised
    output convs), which would let any injection test pass for the wrong reason."""
    model = harness.make_model(arch, v_prediction=v)
    plain = denoise_once(model, arch)
    zeroed = denoise_once(model, arch, zero_residual_of=block)
    assert torch.isfinite(plain).all()
    assert harness.rel(zeroed, plain) > 0.01


def test_models_are_the_real_comfyui_classes():
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models as sm

    model = harness.make_model("sdxl")
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(model.model, comfy.model_base.SDXL)
    assert isinstance(model.model.model_config, sm.SDXL)
    assert len(model.model.diffusion_model.output_blocks) == 9
    assert len(harness.make_model("sd15").model.diffusion_model.output_blocks) == 12
