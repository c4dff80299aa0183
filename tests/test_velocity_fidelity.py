"""Fidelity of the velocity edits to their official code: the pack's nodes on a shrunk real ComfyUI model against
the independent references of tests/velocity_reference.py (written from the official code) run on diffusers'
own transformer classes holding the same weights. Flux.1 here (diffusers' FluxTransformer2DModel, the
official FLUX code's layout); SD3 and Wan 2.1 video in test_velocity_twins_fidelity.py. At the official
defaults and away from them; each comparison keeps a mutation that shows it can fail."""
from __future__ import annotations

import pytest
import torch

import flux_harness as fh
import flux_reference as fref
import harness
import velocity_reference as ref
from comfyui_pnp.nodes import velocity as nodes

TOLERANCE = 1e-3  # relative, model space (measured: about 1e-6)


@pytest.fixture(scope="module")
def flux():
    model = fh.make_flux(double=2, single=4)
    return model, fref.diffusers_twin(model).eval()


def prompt(seed, tokens=8):
    return fh.conditioning(seed=seed, tokens=tokens)


def velocity(net, conditioning, guidance):
    """The twin's velocity for packed latents at flow time t: the official FLUX call (the transformer takes
    t in [0, 1] and the embedded guidance)."""
    txt, vec = conditioning[0][0], conditioning[0][1]["pooled_output"]

    def v(img, t):
        h, w = velocity.grid
        ids = torch.zeros(h, w, 3)
        ids[..., 1] += torch.arange(h)[:, None]
        ids[..., 2] += torch.arange(w)[None, :]
        with torch.no_grad():
            return net(hidden_states=img, encoder_hidden_states=txt.expand(img.shape[0], -1, -1),
                       pooled_projections=vec.expand(img.shape[0], -1), timestep=t.float().expand(img.shape[0]),
                       img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(txt.shape[1], 3),
                       guidance=torch.full((img.shape[0],), float(guidance))).sample
    return v


def model_space(latent):
    return (latent - fref.SHIFT) * fref.SCALE


def user_space(packed, shape):
    return ref.unpack_latents(packed, *shape[-2:]) / fref.SCALE + fref.SHIFT


def source_latent(shape=(8, 12)):
    velocity.grid = (shape[0] // 2, shape[1] // 2)
    return fh.latent(size=16)[..., : shape[0], : shape[1]].contiguous()


def draws(shape, seed, count):
    """FlowEdit's noise as the nodes draw it: Random Noise's (the seed's first draw), then the same generator."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("case", ["official", "away"])
def test_flowedit_is_the_official_flowedit_flux(flux, case):
    """FLUX_exp.yaml (28 steps, n_max 24, guidance 1.5 / 5.5) and away from it (7 steps, n_max 5, n_min 2,
    n_avg 2, a 6x10 latent, two target prompts). Mutation: the reference fed the noise draws one step late
    differs by more than 1%."""
    model, net = flux
    shape, steps, n_max, n_min, n_avg = ((8, 12), 28, 24, 0, 1) if case == "official" else ((6, 10), 7, 5, 2, 2)
    latent = source_latent(shape)
    source, targets = prompt(1), [prompt(5)] + ([] if case == "official" else [prompt(6)])
    target = targets[0] if len(targets) == 1 else [[torch.cat([t[0][0] for t in targets]),
                                                    {"pooled_output": torch.cat([t[0][1]["pooled_output"]
                                                                                 for t in targets])}]]
    out = nodes.PnPFlowEdit.execute(model, {"samples": latent}, source, target, steps, n_max, n_min, n_avg, -1, -1,
                                    11).result[0]["samples"]
    noise = [ref.pack_latents(n) for n in draws(latent.shape, 11, n_max * n_avg + 1)]
    for row, t in enumerate(targets):
        expected = ref.flowedit_flux_packed(ref.pack_latents(model_space(latent)), velocity(net, source, 1.5),
                                            velocity(net, t, 5.5), noise, T_steps=steps, n_avg=n_avg, n_min=n_min,
                                            n_max=n_max)
        assert harness.rel(out[row:row + 1], user_space(expected, latent.shape)) < TOLERANCE
    late = ref.flowedit_flux_packed(ref.pack_latents(model_space(latent)), velocity(net, source, 1.5),
                                    velocity(net, targets[0], 5.5), noise[1:] + noise[:1], T_steps=steps,
                                    n_avg=n_avg, n_min=n_min, n_max=n_max)
    assert harness.rel(out[:1], user_space(late, latent.shape)) > 0.01


@pytest.mark.parametrize("case", ["official", "away"])
def test_uniedit_is_the_official_flux_code(flux, case):
    """The FLUX code (15 steps, alpha 0.6, omega 5, guidance 1, the empty inversion prompt; its mask rule) and away
    (7 steps, alpha 0.8, omega 3, a 6x10 latent, two target prompts). Mutation: the diffusers schedulers' rule
    (signed mask, floor) on the same run differs by more than 1%."""
    model, net = flux
    shape, steps, alpha, omega = ((8, 12), 15, 0.6, 5.0) if case == "official" else ((6, 10), 7, 0.8, 3.0)
    latent = source_latent(shape)
    empty, source, targets = prompt(9, tokens=4), prompt(1), [prompt(5)] + ([] if case == "official" else [prompt(6)])
    target = targets[0] if len(targets) == 1 else [[torch.cat([t[0][0] for t in targets]),
                                                    {"pooled_output": torch.cat([t[0][1]["pooled_output"]
                                                                                 for t in targets])}]]
    out = nodes.PnPUniEdit.execute(model, {"samples": latent}, empty, source, target, steps, alpha, omega, -1,
                                   "auto").result[0]["samples"]
    x0 = ref.pack_latents(model_space(latent))
    for row, t in enumerate(targets):
        expected = ref.uniedit_flux(x0, velocity(net, empty, 1.0), velocity(net, source, 1.0), velocity(net, t, 1.0),
                                    num_steps=steps, alpha=alpha, omega=omega)
        assert harness.rel(out[row:row + 1], user_space(expected, latent.shape)) < TOLERANCE
    other_rule = nodes.PnPUniEdit.execute(model, {"samples": latent}, empty, source, targets[0], steps, alpha, omega,
                                          -1, "scheduler").result[0]["samples"]
    assert harness.rel(other_rule, out[:1]) > 0.01


def test_uniedit_with_equal_prompts_is_the_finite_limit(flux):
    """Source prompt = target prompt: the official FLUX mask is 0/0 (NaN everywhere); the node gives the finite
    limit, the plain source step, which the reference computes with official_nan=False."""
    model, net = flux
    latent, empty, source = source_latent(), prompt(9, tokens=4), prompt(1)
    out = nodes.PnPUniEdit.execute(model, {"samples": latent}, empty, source, source, 6, 0.6, 5.0, -1,
                                   "auto").result[0]["samples"]
    x0 = ref.pack_latents(model_space(latent))
    args = (x0, velocity(net, empty, 1.0), velocity(net, source, 1.0), velocity(net, source, 1.0))
    assert torch.isnan(ref.uniedit_flux(*args, num_steps=6)).all()
    expected = ref.uniedit_flux(*args, num_steps=6, official_nan=False)
    assert torch.isfinite(out).all() and harness.rel(out, user_space(expected, latent.shape)) < TOLERANCE


@pytest.mark.parametrize("case", ["official", "away"])
def test_rf_inversion_is_the_official_pipeline(flux, case):
    """The README example (28 steps, gamma 0.5, eta 0.9 over steps [0, 7), guidance 0 then 3.5) and away (9 steps,
    gamma 0.3, eta 0.7 over [0.1, 0.6), a 6x10 latent). The reference's y_1 is the seed's noise. Mutation: the
    inversion evaluated at i / N (the paper's grid) instead of the pipeline's i / (N + 1) differs by more
    than 0.1%."""
    model, net = flux
    shape, steps, gamma, eta, start, stop = ((8, 12), 28, 0.5, 0.9, 0.0, 7 / 28) if case == "official" else \
        ((6, 10), 9, 0.3, 0.7, 0.1, 0.6)
    latent = source_latent(shape)
    empty, target = prompt(9, tokens=4), prompt(5)
    out = nodes.PnPRFInversion.execute(model, {"samples": latent}, empty, target, steps, gamma, eta, start, stop, -1,
                                       13).result[0]["samples"]
    y0, y1 = ref.pack_latents(model_space(latent)), ref.pack_latents(draws(latent.shape, 13, 1)[0])
    expected = ref.rf_inversion(y0, velocity(net, empty, 0.0), velocity(net, target, 3.5), y1,
                                num_inversion_steps=steps, gamma=gamma, num_inference_steps=steps, eta=eta,
                                start_timestep=start, stop_timestep=stop)
    assert harness.rel(out, user_space(expected, latent.shape)) < TOLERANCE
    v_inv = velocity(net, empty, 0.0)
    paper_grid = ref.rf_inversion_edit(
        ref.rf_inversion_invert(y0, lambda x, t: v_inv(x, t * (steps + 1) / steps), y1, num_inversion_steps=steps,
                                gamma=gamma), y0, velocity(net, target, 3.5), num_inference_steps=steps, eta=eta,
        start_timestep=start, stop_timestep=stop)
    assert harness.rel(out, user_space(paper_grid, latent.shape)) > 1e-3
