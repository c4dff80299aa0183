"""Fidelity: our Flux nodes against an independent implementation of RF-Solver-Edit.

The reference below is written from the official algorithm (wangjiangshan0725/RF-Solver-Edit,
FLUX_Image_Edit/src/flux/sampling.py and modules/layers.py) on a diffusers
FluxTransformer2DModel that holds the same random weights as the ComfyUI Flux (mapped with
ComfyUI's own key mapping, comfy.utils.flux_to_diffusers): packed tokens, the official
get_schedule, inversion from t = 0 to 1 at guidance 1 with the RF-Solver step, the values of
single blocks 20-37 kept in a dict keyed like the official one (the inversion under the
step's upper end, sampling under its current level, first and second evaluation apart) and
put back while sampling the target at guidance 5. Fails if any of schedule, solver, layers,
token range, keys or guidance differs.
"""
import math

import comfy.utils
import pytest
import torch
from einops import rearrange

import flux_harness as fh
import harness
from comfyui_pnp.nodes.flux import PnPFluxApplyInjection, PnPFluxInversion, PnPFluxSampler

diffusers = pytest.importorskip("diffusers")

SCALE, SHIFT = 0.3611, 0.1159     # the Flux autoencoder's latent scale and shift
STEPS, INJECT = 25, 20            # official defaults (edit.py: --num_steps 25, --inject 20)


def diffusers_twin(model):
    config = model.model.model_config.unet_config
    net = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=config["depth"], num_single_layers=config["depth_single_blocks"],
        attention_head_dim=config["hidden_size"] // config["num_heads"], num_attention_heads=config["num_heads"],
        joint_attention_dim=config["context_in_dim"], pooled_projection_dim=config["vec_in_dim"],
        guidance_embeds=True, axes_dims_rope=tuple(config["axes_dim"]))
    comfy_sd = model.model.diffusion_model.state_dict()
    state = {}
    for key, source in comfy.utils.flux_to_diffusers(config, output_prefix="").items():
        if isinstance(source, str):
            if source in comfy_sd:
                state[key] = comfy_sd[source]
        elif source[1] is None:
            if source[0] in comfy_sd:
                state[key] = source[2](comfy_sd[source[0]])
        elif source[0] in comfy_sd:
            dim, start, length = source[1]
            state[key] = comfy_sd[source[0]].narrow(dim, start, length)
    net.load_state_dict(state, strict=True)
    return net.eval()


def official_schedule(steps, tokens, base_shift=0.5, max_shift=1.15):
    mu = base_shift + (max_shift - base_shift) / (4096 - 256) * (tokens - 256)
    return [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if t > 0 else 0.0
            for t in torch.linspace(1, 0, steps + 1).tolist()]


class Reference:
    def __init__(self, net, blocks=range(20, 38)):
        self.net, self.features, self.mode, self.key = net, {}, None, None
        for b in blocks:
            net.single_transformer_blocks[b].attn.to_v.register_forward_hook(self._hook(b))

    def _hook(self, block):
        def hook(module, args, out):
            if self.mode is None:
                return None
            name = (self.key, block)
            if self.mode == "store":
                self.features[name] = out.clone()
                return None
            return self.features[name]
        return hook

    def velocity(self, img, t, txt, vec, guidance, ids):
        ones = torch.ones(img.shape[0])
        return self.net(hidden_states=img, encoder_hidden_states=txt, pooled_projections=vec, timestep=t * ones,
                        img_ids=ids[0], txt_ids=ids[1], guidance=guidance * ones).sample

    @torch.no_grad()
    def denoise(self, img, timesteps, inverse, inject, guidance, txt, vec, ids):
        flags = [True] * inject + [False] * (len(timesteps) - 1 - inject)
        if inverse:
            timesteps, flags = timesteps[::-1], flags[::-1]
        for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
            on = "store" if inverse else "load"
            t_key = t_prev if inverse else t_curr
            self.mode, self.key = (on if flags[i] else None), (t_key, False)
            pred = self.velocity(img, t_curr, txt, vec, guidance, ids)
            mid = img + (t_prev - t_curr) / 2 * pred
            self.key = (t_key, True)
            pred_mid = self.velocity(mid, t_curr + (t_prev - t_curr) / 2, txt, vec, guidance, ids)
            img = img + (t_prev - t_curr) * pred + 0.5 * (t_prev - t_curr) ** 2 * (pred_mid - pred) / ((t_prev - t_curr) / 2)
        self.mode = None
        return img


def reference_edit(model, source, source_prompt, target_prompt, inject, steps=STEPS):
    net = diffusers_twin(model)
    reference = Reference(net)
    z = (source - SHIFT) * SCALE
    h, w = z.shape[-2] // 2, z.shape[-1] // 2
    img = rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] += torch.arange(h)[:, None]
    img_ids[..., 2] += torch.arange(w)[None, :]
    ids = (img_ids.reshape(-1, 3), torch.zeros(source_prompt[0][0].shape[1], 3))
    timesteps = official_schedule(steps, img.shape[1])
    src_txt, src_vec = source_prompt[0][0], source_prompt[0][1]["pooled_output"]
    tgt_txt, tgt_vec = target_prompt[0][0], target_prompt[0][1]["pooled_output"]
    noise = reference.denoise(img, timesteps, True, inject, 1.0, src_txt, src_vec, ids)
    out = reference.denoise(noise, timesteps, False, inject, 5.0, tgt_txt, tgt_vec, ids)
    out = rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)
    return out / SCALE + SHIFT


def test_schedule_is_the_official_get_schedule():
    """The Flux model's own simple schedule, shifted for the image size as ModelSamplingFlux
    does, is the official get_schedule(25, image_seq_len). Fails if either differs."""
    for size in (16, 128):  # 64 and 4096 image tokens
        model = fh.with_shift(fh.make_flux(single=1, double=1), size * 8, size * 8)
        import comfy.samplers

        ours = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
        official = torch.tensor(official_schedule(STEPS, (size // 2) ** 2))
        assert torch.allclose(ours.float(), official.float(), rtol=1e-5, atol=1e-6), (ours, official)


def test_nodes_match_an_independent_diffusers_implementation(record_property):
    model = fh.with_shift(fh.make_flux(seed=3), 128, 128)
    source, source_prompt, target_prompt = fh.latent(), fh.conditioning(seed=5), fh.conditioning(seed=1)

    expected = reference_edit(model, source, source_prompt, target_prompt, INJECT)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, STEPS, INJECT, 1.0,
                                       "rf-solver-edit", "rf_solver", "simple").result
    (got,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, INJECT).result
    error = harness.rel(got["samples"], expected)
    record_property("relative_error", error)
    print(f"\nFlux RF-Solver-Edit, {STEPS} steps, inject {INJECT}: relative error {error:.2e}")
    assert error < 1e-3

    (plain,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, 0).result
    effect = harness.rel(got["samples"], plain["samples"])
    record_property("injection_effect", effect)
    print(f"injection effect: {effect:.3f} relative")
    assert effect > 0.10


@pytest.mark.parametrize("steps", [15, 28, 30])
@pytest.mark.parametrize("size", [(24, 16), (16, 40), (128, 128)])
def test_official_schedule_at_any_step_count_and_size(steps, size):
    """The `official` schedule is get_schedule(steps, image tokens) for every step count and
    image size, on a model without ModelSamplingFlux. ComfyUI's `simple` (a 10,000-entry table)
    is not, at these counts: that is why `official` exists. Fails if the shift, the token
    count (odd sizes pad) or the spacing differs."""
    from comfyui_pnp.pnp_injection.flow import schedule as flux_schedule

    model = fh.make_flux(single=1, double=1)
    shape = (1, 16, *size)
    ours = flux_schedule.sampling_sigmas(model, "official", steps, shape)
    official = torch.tensor(official_schedule(steps, math.ceil(size[0] / 2) * math.ceil(size[1] / 2)))
    assert len(ours) == steps + 1
    assert torch.allclose(ours, official, rtol=1e-6, atol=1e-7), (ours - official).abs().max()

    import comfy.samplers
    shifted = fh.with_shift(model, size[1] * 8, size[0] * 8)
    simple = comfy.samplers.calculate_sigmas(shifted.get_model_object("model_sampling"), "simple", steps).float()
    assert (simple - official).abs().max() > 1e-5  # the table's rounding: the defect `official` removes


@pytest.mark.parametrize("route", ["sampler", "advanced"])
def test_an_edit_at_15_steps_on_a_non_square_latent_matches_the_official_algorithm(route, record_property):
    """15 steps on a 24x16 latent, where ComfyUI's simple schedule is off by 2.8e-3: both routes
    (PnP Flux Sampler, and SamplerCustomAdvanced with PnP Flux Noise and the RF-Solver sampler)
    equal an independent RF-Solver-Edit to 1e-3, on a model without ModelSamplingFlux. Also
    shows that injection moves the result."""
    steps, inject = 15, 12
    model = fh.make_flux(seed=3)
    source = fh.latent(size=24)[..., :16]
    source_prompt, target_prompt = fh.conditioning(seed=5), fh.conditioning(seed=1)
    expected = reference_edit(model, source, source_prompt, target_prompt, inject, steps)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, steps, inject, 1.0,
                                       "rf-solver-edit", "rf_solver", "official").result
    if route == "sampler":
        (out,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, inject).result
        got = out["samples"]
    else:
        (patched,) = PnPFluxApplyInjection.execute(model, bank, inject).result
        got = fh.custom_advanced(patched, bank, target_prompt)
    error = harness.rel(got, expected)
    record_property("relative_error", error)
    print(f"\nFlux RF-Solver-Edit, {steps} steps on 24x16, {route}: relative error {error:.2e}")
    assert error < 1e-3
    (plain,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, 0).result
    assert harness.rel(got, plain["samples"]) > 0.10
