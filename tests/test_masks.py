"""Regional edits (pnp_injection/region.py) on both wings: outside the mask the source's own path,
inside the PnP edit; degenerate, per-row and feathered masks; the mask's sources and precedence;
Differential Diffusion; bad masks refused before any model work."""
import comfy.patcher_extension as ext
import pytest
import torch
from comfy_extras.nodes_custom_sampler import KSamplerSelect, SamplerCustomAdvanced
from comfy_extras.nodes_differential_diffusion import DifferentialDiffusion

import flux_harness
import harness
from host import run_node
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import sampling as flux_sampling
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import generation, inversion, patches, sampling

STEPS, SIZE = 8, 16


def half_mask(side: str = "right", rows: int = 1) -> torch.Tensor:
    mask = torch.zeros(rows, SIZE, SIZE)
    mask[..., SIZE // 2:] = 1
    return mask if side == "right" else 1 - mask


def outside(x):  # the left half: outside `half_mask()`
    return x[..., : SIZE // 2]


def inside(x):
    return x[..., SIZE // 2:]


class CallProbe:
    """A PREDICT_NOISE wrapper on the base model, outermost: it sees the sampler's own latent at
    every model call (before the masked blend) and counts the calls."""

    def __init__(self, model):
        self.calls = []
        self.model = model.clone()
        self.model.add_wrapper_with_key(ext.WrappersMP.PREDICT_NOISE, "test_probe", self)

    def __call__(self, executor, x, timestep, *args, **kwargs):
        self.calls.append((float(timestep.reshape(-1)[0]), x.detach().clone()))
        return executor(x, timestep, *args, **kwargs)

    def off_path(self, bank, region) -> float:
        """The largest relative distance, over the calls, of the sampler's latent from the bank's
        path at the call's sigma, within `region`."""
        worst = 0.0
        for sigma, x in self.calls:
            level = int(torch.isclose(bank.sigmas, torch.tensor(sigma), rtol=1e-4).nonzero()[0])
            worst = max(worst, harness.rel(region(x), region(bank.path[level].expand_as(x))))
        return worst


@pytest.fixture(scope="module")
def unet():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    source = harness.latent()
    bank = banks.capture(model, inversion.invert(model, source, empty, steps=STEPS, evaluations=STEPS), 0.8, 0.5)
    trajectory, generated = generation.generate(model, torch.zeros(1, 4, SIZE, SIZE), target, empty, 7.5, seed=3,
                                                steps=STEPS)
    generated_bank = banks.capture(model, trajectory, 0.8, 0.5)

    def edit(bank=bank, mask=None, model=model, prompt=target):
        return sampling.pnp_sample(model, bank, prompt, empty, 7.5, 0.8, 0.5, mask=mask)
    return dict(model=model, empty=empty, target=target, source=source, bank=bank, generated=generated,
                generated_bank=generated_bank, edit=edit, unmasked=edit())


def test_generated_source_outside_a_hard_mask_is_the_source_at_every_step(unet):
    """An exact trajectory (PnP Generate Source): the sampler's latent outside the mask is the
    trajectory at every call (DDIM lands on the path's next level), and the result outside is the
    generated latent. Fails if the blend used the source's straight noising (the host's inpainting)
    or the prediction outside did not lead to the path's next level."""
    probe = CallProbe(unet["model"])
    bank = unet["generated_bank"]
    out = unet["edit"](bank, half_mask(), probe.model)
    assert len(probe.calls) == STEPS
    assert probe.off_path(bank, outside) < 1e-5  # measured 4.8e-8
    assert harness.rel(outside(out), outside(unet["generated"])) < 1e-5  # measured 0
    assert harness.rel(inside(out), inside(unet["generated"])) > 0.1  # measured 0.23


def test_inverted_source_outside_the_mask_is_the_trajectorys_end(unet):
    """An inverted source: outside the mask the result is the trajectory's own end (the encoded
    source latent), and each call's latent there is the trajectory's level."""
    probe = CallProbe(unet["model"])
    out = unet["edit"](mask=half_mask(), model=probe.model)
    assert probe.off_path(unet["bank"], outside) < 1e-5
    assert harness.rel(outside(out), outside(unet["source"])) < 1e-5
    assert harness.rel(inside(out), inside(unet["source"])) > 0.1


def test_degenerate_masks(unet):
    """All ones: the unmasked edit bit for bit (the blend is exact arithmetic with weight 1). All
    zeros would edit nothing: refused before any model work, as on every path (test_mask_refusals.py)."""
    assert torch.equal(unet["edit"](mask=torch.ones(1, SIZE, SIZE)), unet["unmasked"])
    probe = CallProbe(unet["model"])
    with pytest.raises(PnPError, match="The mask is black everywhere"):
        unet["edit"](mask=torch.zeros(1, SIZE, SIZE), model=probe.model)
    assert probe.calls == []


def test_one_mask_per_row_of_a_prompt_batch(unet):
    """Row 0 edits the right half, row 1 the left: each row keeps the source where its own mask is 0."""
    prompts = harness.conditioning(seed=1, batch=2)
    masks = torch.stack([half_mask()[0], half_mask("left")[0]])
    out = unet["edit"](mask=masks, prompt=prompts)
    source = unet["source"][0]
    assert harness.rel(outside(out[0]), outside(source)) < 1e-5
    assert harness.rel(inside(out[1]), inside(source)) < 1e-5
    assert harness.rel(inside(out[0]), inside(source)) > 0.1 and harness.rel(outside(out[1]), outside(source)) > 0.1


def column_profile(out, source):
    """Mean absolute difference from the source per latent column."""
    return (out - source).abs().mean(dim=(0, 1, 2))


def test_a_feathered_mask_changes_the_image_only_across_the_feather(unet):
    """A mask rising linearly over 4 columns (6..9) from 0 to 1. Measured per column: the mean
    absolute change from the source. Left of the feather it is 0 (the source); the change grows
    across the feather; the largest jump between neighbouring columns is well below the hard
    mask's jump at its edge (a seam). Fails if soft values were rounded to a hard edge."""
    feather = torch.zeros(1, SIZE, SIZE)
    feather[..., 6:10] = torch.tensor([0.2, 0.4, 0.6, 0.8])
    feather[..., 10:] = 1
    hard = (feather >= 0.5).float()
    soft_profile = column_profile(unet["edit"](mask=feather), unet["source"])
    hard_profile = column_profile(unet["edit"](mask=hard), unet["source"])
    assert float(soft_profile[:6].max()) < 1e-5 * float(soft_profile.max())
    ramp = soft_profile[5:11]
    assert bool((ramp[1:] > ramp[:-1]).all()), ramp
    soft_jump = float((soft_profile[1:] - soft_profile[:-1]).abs()[:10].max())
    hard_jump = float((hard_profile[1:] - hard_profile[:-1]).abs()[:10].max())
    assert soft_jump < 0.6 * hard_jump, (soft_jump, hard_jump)  # measured 0.3x


def test_the_samplers_mask_wins_over_the_source_latents_noise_mask(unet):
    """A source latent carrying a noise_mask (Set Latent Noise Mask before PnP DDIM Inversion) makes
    the edit regional with no mask on the sampler; the sampler's mask wins over it."""
    model, empty = unet["model"], unet["empty"]
    trajectory = inversion.invert(model, unet["source"], empty, steps=STEPS, evaluations=STEPS,
                                  mask=half_mask("left"))
    bank = banks.capture(model, trajectory, 0.8, 0.5)
    by_source = unet["edit"](bank)
    assert harness.rel(inside(by_source), inside(unet["source"])) < 1e-5  # its mask is the left half
    by_sampler = unet["edit"](bank, half_mask())
    assert harness.rel(outside(by_sampler), outside(unet["source"])) < 1e-5
    assert torch.equal(by_sampler, unet["edit"](mask=half_mask()))


def test_samplercustomadvanced_takes_the_latents_noise_mask(unet):
    """PnP Apply Feature Injection + SamplerCustomAdvanced with Set Latent Noise Mask on the latent:
    the mask is taken from the host (its own inpainting blend kept out) and gives the same edit as
    PnP Sampler with that mask."""
    patched = patches.apply_injection(unet["model"], unet["bank"], 0.8, 0.5)
    guider = torch_guider(patched, unet)
    (sampler,) = run_node(KSamplerSelect, "ddim")
    start = sampling.start_latent(unet["model"], unet["bank"])
    latent = {"samples": start["samples"], "noise_mask": half_mask()[:, None]}
    noise = ZeroNoise()
    out, _ = run_node(SamplerCustomAdvanced, noise, guider, sampler, unet["bank"].sigmas, latent)
    assert harness.rel(out["samples"], unet["edit"](mask=half_mask())) < 1e-5


class ZeroNoise:
    seed = 0

    def generate_noise(self, latent):
        return torch.zeros_like(latent["samples"])


def torch_guider(model, unet):
    import comfy.samplers
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(unet["target"], unet["empty"])
    guider.set_cfg(7.5)
    return guider


def test_differential_diffusion_composes(unet):
    """Differential Diffusion's mask function is applied at each call as the host applies it: with a
    soft mask the edit changes, and where the mask is 0 it is still the source."""
    soft = torch.linspace(0, 1, SIZE).expand(1, SIZE, SIZE).clone()
    (with_dd,) = run_node(DifferentialDiffusion, unet["model"])
    plain = unet["edit"](mask=soft)
    composed = unet["edit"](mask=soft, model=with_dd)
    assert harness.rel(composed, plain) > 0.01
    assert harness.rel(composed[..., 0], unet["source"][..., 0]) < 1e-5


@pytest.mark.parametrize("mask, words", [
    (torch.ones(1, SIZE * 8 + 16, SIZE * 8), "draw the mask on the source image"),
    (torch.ones(1, SIZE, SIZE * 2), "draw the mask on the source image"),
    (torch.ones(3, SIZE, SIZE), "one mask per row"),
    (torch.ones(0, SIZE, SIZE), "The mask is empty"),
    (torch.full((1, SIZE, SIZE), float("nan")), "NaN"),
    (torch.full((1, SIZE, SIZE), 2.0), "a mask holds 0"),
])
def test_bad_masks_are_refused_before_any_model_work(unet, mask, words):
    probe = CallProbe(unet["model"])
    with pytest.raises(PnPError, match=words):
        unet["edit"](mask=mask, model=probe.model, prompt=harness.conditioning(seed=1, batch=2))
    assert probe.calls == []


def test_a_bank_without_the_path_refuses_a_mask(unet):
    """A bank file saved before masks holds no path: a mask names the fix, before any model work."""
    import dataclasses
    old = dataclasses.replace(unet["bank"], path=None)
    probe = CallProbe(unet["model"])
    with pytest.raises(PnPError, match="Invert and capture the source again"):
        unet["edit"](old, half_mask(), probe.model)
    assert probe.calls == []


def test_a_mask_at_the_source_images_pixel_size_is_resized_as_comfyui_does(unet):
    """A mask drawn on the 128x128 px source gives the same edit as the same mask at the latent's size."""
    pixels = half_mask().repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)
    assert harness.rel(unet["edit"](mask=pixels), unet["edit"](mask=half_mask())) < 1e-6


# --- Flux ---

@pytest.fixture(scope="module")
def flux():
    model = flux_harness.make_flux()
    source = flux_harness.latent()
    return dict(model=model, source=source, target=flux_harness.conditioning(seed=1),
                rf=flux_harness.invert(model, source), fire=flux_harness.invert(model, source, solver="fireflow",
                                                                               layers="fireflow", keep_steps=1))


@pytest.mark.parametrize("solver", ["rf", "fire"])
def test_flux_outside_the_mask_is_the_inverted_source(flux, solver):
    """PnP Flux/Chroma/HunyuanVideo Sampler with a hard mask: outside, the inverted path's end (the source latent); the
    RF-Solver sampler carries the path exactly at every call (both of its evaluations lie on the
    chord to the next level); inside the edit. All ones: the unmasked edit bit for bit."""
    bank, inject = flux[solver], (5 if solver == "rf" else 1)
    probe = CallProbe(flux["model"])
    out = flux_sampling.pnp_sample(probe.model, bank, flux["target"], 5.0, inject, mask=half_mask())
    assert harness.rel(outside(out), outside(flux["source"])) < 1e-5
    assert harness.rel(inside(out), inside(flux["source"])) > 0.1
    if solver == "rf":
        on_schedule = [(s, x) for s, x in probe.calls if bool(torch.isclose(bank.sigmas, torch.tensor(s)).any())]
        probe.calls = on_schedule
        assert len(on_schedule) == bank.steps and probe.off_path(bank, outside) < 1e-5
    unmasked = flux_sampling.pnp_sample(flux["model"], bank, flux["target"], 5.0, inject)
    assert torch.equal(flux_sampling.pnp_sample(flux["model"], bank, flux["target"], 5.0, inject,
                                                mask=torch.ones(1, SIZE, SIZE)), unmasked)


def test_flux_bad_masks_and_banks_without_the_path(flux):
    import dataclasses
    probe = CallProbe(flux["model"])
    with pytest.raises(PnPError, match="draw the mask on the source image"):
        flux_sampling.pnp_sample(probe.model, flux["rf"], flux["target"], 5.0, 5, mask=torch.ones(1, 8, 8))
    with pytest.raises(PnPError, match="Invert the source again with PnP Flux/Chroma/HunyuanVideo Inversion"):
        flux_sampling.pnp_sample(probe.model, dataclasses.replace(flux["rf"], path=None), flux["target"], 5.0, 5,
                                 mask=half_mask())
    assert probe.calls == []


def test_injection_inside_the_mask_only_is_the_measured_alternative(unet):
    """The README's comparison runs injection restricted to the mask (`inject_outside=False`), the
    variant not chosen: with a mask of all ones it is the unmasked edit bit for bit, with a half mask
    it differs from injection everywhere (the outside's injected features reach the inside through
    self-attention and convolutions)."""
    ones = torch.ones(1, SIZE, SIZE)
    edit = unet["edit"]
    only_inside = sampling.pnp_sample(unet["model"], unet["bank"], unet["target"], unet["empty"], 7.5, 0.8, 0.5,
                                      mask=ones, inject_outside=False)
    assert torch.equal(only_inside, unet["unmasked"])
    half = sampling.pnp_sample(unet["model"], unet["bank"], unet["target"], unet["empty"], 7.5, 0.8, 0.5,
                               mask=half_mask(), inject_outside=False)
    assert harness.rel(inside(half), inside(edit(mask=half_mask()))) > 1e-3
    assert harness.rel(outside(half), outside(unet["source"])) < 1e-5
