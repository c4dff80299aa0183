"""Beyond the paper: layer sets as data, SDXL and SD 2.x, generated sources, the
negative-prompt schedule, batches, and DiT/flow refusals."""
import comfy.sample
import comfy.samplers
import pytest
import torch

import harness
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection import passes
from comfyui_pnp.pnp_injection.unet import generation, guidance, inversion, layers, patches, sampling
from comfyui_pnp.pnp_injection.unet.inversion import Trajectory
from harness import plain_sample


# --- layer sets as data --------------------------------------------------------------------

def test_custom_layer_text():
    assert layers.parse_custom("res:output.4; attn:output.4-11@0") == layers.PAPER_SD
    assert layers.parse_custom("attn:output.0,2@*") == layers.LayerSet((), ((0, -1), (2, -1)))
    assert layers.parse_custom(" res : output.3,5 ") == layers.LayerSet((3, 5), ())


@pytest.mark.parametrize("text", ["res:input.4", "attn:output.x", "", "foo", "res:output.4;; bar:output.1"])
def test_bad_custom_layer_text_names_the_format(text):
    with pytest.raises(PnPError, match="res:output.4; attn:output.4-11@0"):
        layers.parse_custom(text)


def test_presets_per_architecture():
    assert layers.resolve(harness.make_model("sd15")) == layers.PAPER_SD
    assert layers.resolve(harness.make_model("sd21")) == layers.PAPER_SD
    sdxl = layers.resolve(harness.make_model("sdxl"))  # the shrunk SDXL has 2 transformers per block
    assert sdxl == layers.LayerSet((0,), ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)))
    with pytest.raises(PnPError, match="output blocks 0..8; output block 11 does not exist"):
        layers.resolve(harness.make_model("sdxl"), "auto", "attn:output.11")
    with pytest.raises(PnPError, match="not for sd1"):
        layers.resolve(harness.make_model("sd15"), "ctrl-x")


# --- SDXL and SD 2.x -----------------------------------------------------------------------

ARCHS = [("sdxl", False), ("sd21", False), ("sd21", True)]


@pytest.mark.parametrize("arch, v", ARCHS, ids=["sdxl", "sd2-eps", "sd2-v"])
def test_architecture_round_trip(arch, v):
    """eps: the error shrinks as inversion steps grow (5 sampling steps); v: a random v-model's
    ODE is curved, so matched grids are compared (see test_engine)."""
    model = harness.make_model(arch, v_prediction=v, output_gain=0.03)
    empty = harness.conditioning(arch, seed=5)
    source = harness.latent()
    runs = [(5, 5), (20, 20)] if v else [(5, 5), (5, 25)]  # eps, measured: sdxl 0.062 -> 0.040, sd2 0.044 -> 0.024
    errors = []
    for steps, evaluations in runs:
        trajectory = inversion.invert(model, source, empty, steps=steps, evaluations=evaluations)
        back = sampling.pnp_sample(model, banks.capture(model, trajectory, 0, 0), empty, empty, 1.0, 0, 0)
        errors.append(harness.rel(back, source))
    assert errors[1] < errors[0] and errors[1] < 0.05, errors


@pytest.mark.parametrize("arch, v", ARCHS, ids=["sdxl", "sd2-eps", "sd2-v"])
def test_architecture_injection_effect_and_fractions_zero(arch, v):
    model = harness.make_model(arch, v_prediction=v)
    empty, target = harness.conditioning(arch, seed=5), harness.conditioning(arch, seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=8, evaluations=8)
    bank = banks.capture(model, trajectory)
    off = sampling.pnp_sample(model, bank, target, empty, 7.5, 0.0, 0.0)
    on = sampling.pnp_sample(model, bank, target, empty, 7.5)
    start = sampling.start_latent(model, bank)["samples"]
    assert torch.equal(off, plain_sample(model, start, bank.sigmas, target, empty, 7.5))
    assert harness.rel(on, off) > 0.10


# --- generated sources ---------------------------------------------------------------------

def test_capture_from_a_generated_source_equals_capture_from_its_latents():
    model = harness.make_model("sd15")
    prompt, negative = harness.conditioning(seed=7), harness.conditioning(seed=6)
    empty_latent = torch.zeros(1, 4, 16, 16)
    trajectory, samples = generation.generate(model, empty_latent, prompt, negative, 7.5, seed=3, steps=6)

    # The same generation by hand, recording x before each step.
    by_hand = []
    noise = comfy.sample.prepare_noise(empty_latent, 3)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(prompt, negative)
    guider.set_cfg(7.5)
    with torch.no_grad():
        expected = guider.sample(noise, empty_latent, comfy.samplers.sampler_object("ddim"), trajectory.sigmas,
                                 callback=lambda i, d, x, n: by_hand.append(x.clone()), disable_pbar=True, seed=3)
    assert torch.equal(samples, expected)
    assert len(by_hand) == trajectory.steps
    manual = Trajectory(sigmas=trajectory.sigmas, latents=torch.stack(by_hand), conditioning=prompt,
                        family=trajectory.family)
    a, b = banks.capture(model, trajectory), banks.capture(model, manual)
    for table in ("residual", "attention"):
        for key, tensor in getattr(a, table).items():
            assert torch.equal(tensor, getattr(b, table)[key]), (table, key)
    assert harness.rel(a.residual[4][1], a.residual[4][0]) > 0.01  # the steps differ: a real path


# --- negative-prompt schedule ---------------------------------------------------------------

def test_negative_weights_follow_the_spec():
    n = 11
    assert [guidance.negative_weight(0.5, "constant", i, n) for i in (0, 5, 10)] == [0.5] * 3
    assert [guidance.negative_weight(1.0, "linear", i, n) for i in (0, 5, 10)] == [1.0, 0.5, 0.0]
    import math
    assert guidance.negative_weight(0.8, "exp", 5, n) == pytest.approx(0.8 * math.exp(-3.0))
    with pytest.raises(PnPError, match="choose one of"):
        guidance.negative_weight(1.0, "cosine", 0, n)


@pytest.fixture(scope="module")
def guided():
    model = harness.make_model("sd15")
    empty, target, source = (harness.conditioning(seed=s) for s in (5, 1, 9))
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    return model, empty, target, source, banks.capture(model, trajectory, conditioning=source)


def test_alpha_one_constant_equals_plain_guidance(guided):
    model, empty, target, source, bank = guided
    start = sampling.start_latent(model, bank)["samples"]
    plain = plain_sample(model, start, bank.sigmas, target, empty, 7.5)
    guider = guidance.NegativeScheduleGuider(model, 1.0, "constant")
    guider.set_conds(target, empty, source)
    guider.set_cfg(7.5)
    with torch.no_grad():
        scheduled = guider.sample(torch.zeros_like(start), start, comfy.samplers.sampler_object("ddim"),
                                  bank.sigmas, disable_pbar=True, seed=0)
    assert harness.rel(scheduled, plain) < 1e-5


def test_schedule_matches_the_formula_step_by_step(guided):
    """Each step's guided prediction equals docs/pnp.md section 5's combination of three separate
    single-prompt evaluations at the same x; the source prompt is the default negative."""
    model, empty, target, source, bank = guided
    steps = bank.steps
    states = []

    def record(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            denoised = model_k(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)
            states.append((x.clone(), denoised))
            x = denoised + sigmas[i + 1] * (x - denoised) / sigmas[i]
        return x

    guider = guidance.NegativeScheduleGuider(model, 0.7, "linear")
    guider.set_conds(target, empty, sampling.source_negative_or_prompt(bank, None))
    guider.set_cfg(7.5)
    start = sampling.start_latent(model, bank)["samples"]
    with torch.no_grad():
        guider.sample(torch.zeros_like(start), start, comfy.samplers.KSAMPLER(record), bank.sigmas,
                      disable_pbar=True, seed=0)

    def single(cond):
        out = []

        def loop(model_fn, x, sigmas):
            for i, (state, _) in enumerate(states):
                out.append(model_fn(state, sigmas[i] * state.new_ones(state.shape[0])))
            return x
        with torch.no_grad():
            passes.run_loop(model, cond, torch.zeros_like(start), bank.sigmas, loop)
        return out

    pos, emp, neg = single(target), single(empty), single(source)
    for i, (_, guided_denoised) in enumerate(states):
        alpha_i = 0.7 * (1 - i / (steps - 1))
        unconditional = alpha_i * emp[i] + (1 - alpha_i) * neg[i]
        expected = unconditional + 7.5 * (pos[i] - unconditional)
        assert harness.rel(guided_denoised, expected) < 1e-5, i


def test_schedule_through_the_sampler_changes_the_result(guided):
    model, empty, target, source, bank = guided
    plain = sampling.pnp_sample(model, bank, target, empty, 7.5)
    scheduled = sampling.pnp_sample(model, bank, target, empty, 7.5, negative_alpha=0.5, negative_schedule="exp")
    assert harness.rel(scheduled, plain) > 0.01


# --- batches ---------------------------------------------------------------------------------

def test_batch_of_four_frames_matches_single_frame_runs():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    frames = torch.cat([harness.latent(seed=s) for s in range(4)])
    trajectory = inversion.invert(model, frames, empty, steps=5, evaluations=5)
    bank = banks.capture(model, trajectory)
    assert bank.residual[4].shape[1] == 4
    batch = sampling.pnp_sample(model, bank, target, empty)
    for r in range(4):
        single_t = inversion.invert(model, frames[r:r + 1], empty, steps=5, evaluations=5)
        single = sampling.pnp_sample(model, banks.capture(model, single_t), target, empty)
        assert harness.rel(batch[r:r + 1], single) < 1e-4, r
    assert harness.rel(batch[0], batch[1]) > 0.05  # the rows really are different frames


# --- DiT / flow models -----------------------------------------------------------------------

def test_dit_models_are_refused_through_every_entry(guided):
    flux = harness.make_flux()
    _, _, _, _, bank = guided
    with pytest.raises(PnPError, match="no ResBlocks"):
        guidance.NegativeScheduleGuider(flux, 0.5, "linear")
    with pytest.raises(PnPError, match="no ResBlocks"):
        patches.apply_injection(flux, bank)
    with pytest.raises(PnPError, match="no ResBlocks"):
        generation.generate(flux, torch.zeros(1, 16, 8, 8), [[torch.zeros(1, 4, 32), {}]], [[torch.zeros(1, 4, 32), {}]])
