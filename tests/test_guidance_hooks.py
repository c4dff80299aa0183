"""The negative-prompt schedule (PnP Guider, PnP Sampler's schedule options) with the model's
CFG hooks: RescaleCFG (`sampler_cfg_function`), PAG and SAG (`sampler_post_cfg_function`),
applied through ComfyUI's own nodes as a user would. The schedule must run them exactly as
ComfyUI's CFGGuider does, with the blended unconditional prediction as `uncond`, and the extra
prompt must reach the U-Net as an unconditional (kind 1) chunk, encoded as a negative prompt."""
import comfy.patcher_extension as ext
import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_model_advanced import RescaleCFG
from comfy_extras.nodes_pag import PerturbedAttentionGuidance
from comfy_extras.nodes_sag import SelfAttentionGuidance

from host import run_node
import harness
from comfyui_pnp.nodes.injection import PnPGuider
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection import passes
from comfyui_pnp.pnp_injection.unet import guidance, inversion, patches, sampling

CFG = 7.5
HOOKS = {
    "rescale_cfg": lambda m: run_node(RescaleCFG, m, 0.7)[0],
    "pag": lambda m: run_node(PerturbedAttentionGuidance, m, 3.0)[0],
    "sag": lambda m: run_node(SelfAttentionGuidance, m, 0.5, 2.0)[0],
}


@pytest.fixture(scope="module")
def setup():
    model = harness.make_model("sd15")
    empty, target, source = (harness.conditioning(seed=s) for s in (5, 1, 9))
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    bank = banks.capture(model, trajectory, conditioning=source)
    return model, empty, target, source, bank


def sample(guider, bank, model):
    start = sampling.start_latent(model, bank)["samples"]
    with torch.no_grad():
        return guider.sample(torch.zeros_like(start), start, comfy.samplers.sampler_object("ddim"), bank.sigmas,
                             disable_pbar=True, seed=0)


def pnp_guider(model, target, empty, source, alpha, schedule):
    (guider,) = PnPGuider.execute(model, target, empty, CFG, alpha, schedule, source_negative=source).result
    return guider


def cfg_guider(model, target, negative):
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(target, negative)
    guider.set_cfg(CFG)
    return guider


@pytest.mark.parametrize("injected", [False, True], ids=["plain", "pnp"])
@pytest.mark.parametrize("hook", ["rescale_cfg", "pag"])
def test_alpha_one_constant_equals_cfg_guider_bit_for_bit(setup, hook, injected):
    """alpha 1 / constant is ordinary guidance, so PnP Guider must give CFGGuider's result
    exactly, hooks included. Fails if the schedule combines the predictions itself (the
    hook is dropped: the result moves by the hook's effect, asserted below to be large), or
    evaluates the unused negative prompt in the same batch (rounding differs)."""
    model, empty, target, source, bank = setup
    base = patches.apply_injection(model, bank) if injected else model
    hooked = HOOKS[hook](base)
    ours = sample(pnp_guider(hooked, target, empty, source, 1.0, "constant"), bank, model)
    core = sample(cfg_guider(hooked, target, empty), bank, model)
    assert torch.equal(ours, core)
    assert harness.rel(core, sample(cfg_guider(base, target, empty), bank, model)) > 0.01  # the hook acts
    if injected:  # and so does PnP
        assert harness.rel(core, sample(cfg_guider(HOOKS[hook](model), target, empty), bank, model)) > 0.10


@pytest.mark.parametrize("hook", list(HOOKS))
def test_constant_blend_equals_cfg_guider_with_the_combined_negative(setup, hook):
    """At a constant alpha, the schedule's unconditional prediction is ComfyUI's own prediction of
    a negative made of both prompts at strengths alpha and 1 - alpha (Conditioning Set Area
    Strength, then Combine). So PnP Guider must equal CFGGuider with that negative, with every
    hook. Fails if a hook is dropped or sees another `uncond` (only the empty prompt, or the
    source prompt as a third kind of chunk that SAG does not record)."""
    model, empty, target, source, bank = setup
    hooked = HOOKS[hook](patches.apply_injection(model, bank))
    alpha = 0.3
    combined = ([[c, {**d, "strength": alpha}] for c, d in empty]
                + [[c, {**d, "strength": 1.0 - alpha}] for c, d in source])
    ours = sample(pnp_guider(hooked, target, empty, source, alpha, "constant"), bank, model)
    core = sample(cfg_guider(hooked, target, combined), bank, model)
    assert harness.rel(ours, core) < 1e-6
    assert harness.rel(ours, sample(pnp_guider(patches.apply_injection(model, bank), target, empty, source, alpha,
                                               "constant"), bank, model)) > 0.01  # the hook acts


def test_rescale_cfg_sees_the_scheduled_blend_at_every_step(setup):
    """With alpha 0.5 linear, each step's guided prediction must be ComfyUI's `cfg_function`
    (with RescaleCFG's hook) applied to the target prediction and docs/pnp.md section 5's blend
    alpha_i * eps("") + (1 - alpha_i) * eps(source), each from its own single-prompt
    evaluation at the same x. Fails if the hook is dropped, gets the empty prompt alone as
    `uncond`, or the schedule's weights are off."""
    model, empty, target, source, bank = setup
    rescaled = HOOKS["rescale_cfg"](model)
    states = []

    def record(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            denoised = model_k(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)
            states.append((x.clone(), sigmas[i].clone(), denoised))
            x = denoised + sigmas[i + 1] * (x - denoised) / sigmas[i]
        return x

    start = sampling.start_latent(model, bank)["samples"]
    with torch.no_grad():
        pnp_guider(rescaled, target, empty, source, 0.5, "linear").sample(
            torch.zeros_like(start), start, comfy.samplers.KSAMPLER(record), bank.sigmas, disable_pbar=True, seed=0)

    def single(cond):
        out = []

        def loop(model_fn, x, sigmas):
            out.extend(model_fn(state, sigma * state.new_ones(1)) for state, sigma, _ in states)
            return x
        with torch.no_grad():
            passes.run_loop(model, cond, torch.zeros_like(start), bank.sigmas, loop)
        return out

    pos, emp, neg = single(target), single(empty), single(source)
    steps, moved = bank.steps, []
    for i, (x, sigma, guided) in enumerate(states):
        alpha_i = 0.5 * (1 - i / (steps - 1))
        blend = alpha_i * emp[i] + (1 - alpha_i) * neg[i]
        expected = comfy.samplers.cfg_function(model.model, pos[i], blend, CFG, x, sigma.reshape(1),
                                               model_options=rescaled.model_options)
        plain_cfg = blend + CFG * (pos[i] - blend)
        assert harness.rel(guided, expected) < 1e-5, i
        moved.append(harness.rel(guided, plain_cfg))
    print("RescaleCFG's change per step", moved)
    assert max(moved) > 0.05, moved  # RescaleCFG acts


@pytest.mark.parametrize("entry", ["guider", "sampler"])
def test_rescale_cfg_changes_the_scheduled_result(setup, entry):
    """The issue's symptom: with a schedule, RescaleCFG changed nothing (0.0). Measured here
    (7 steps, alpha 0.5 linear, multiplier 0.7, with injection): 0.63 relative through PnP
    Guider and through PnP Sampler. Fails if the schedule drops `sampler_cfg_function`."""
    model, empty, target, source, bank = setup
    rescaled = HOOKS["rescale_cfg"](model)
    if entry == "sampler":
        def run(m):
            return sampling.pnp_sample(m, bank, target, empty, CFG, negative_alpha=0.5, negative_schedule="linear",
                                       source_negative=source)
    else:
        def run(m):
            return sample(pnp_guider(patches.apply_injection(m, bank), target, empty, source, 0.5, "linear"), bank, m)
    change = harness.rel(run(rescaled), run(model))
    print(entry, "RescaleCFG's change", change)
    assert change > 0.1, change


def test_source_negative_is_an_unconditional_chunk_encoded_as_negative(setup, monkeypatch):
    """Patches that read `cond_or_uncond` (SAG, IP-Adapter-like packs) know two kinds of chunk:
    0 cond, 1 uncond. The schedule's extra prompt must come as kind 1, so a step with both
    prompts in the blend runs chunks [0, 1, 1], and the last step (alpha_i 0) [0, 1]. And it
    must be encoded with prompt_type "negative" (SDXL's refiner reads it). Fails if the source
    negative is a third kind (2) or is encoded under another prompt type."""
    model, empty, target, source, bank = setup
    calls, encoded = [], []

    def probe(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        calls.append((float(transformer_options["sigmas"][0]), sorted(transformer_options["cond_or_uncond"])))
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    probed = model.clone()
    probed.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    extra_conds = model.model.extra_conds

    def spy(**kwargs):
        encoded.append((kwargs["cross_attn"], kwargs.get("prompt_type")))
        return extra_conds(**kwargs)

    monkeypatch.setattr(model.model, "extra_conds", spy)
    sample(pnp_guider(probed, target, empty, source, 0.5, "linear"), bank, model)
    step_of = {round(float(s), 5): i for i, s in enumerate(bank.sigmas[:-1])}
    chunks = {step_of[round(s, 5)]: c for s, c in calls}
    assert len(calls) == bank.steps
    assert chunks == {**{i: [0, 1, 1] for i in range(bank.steps - 1)}, bank.steps - 1: [0, 1]}
    types = {(torch.equal(c, source[0][0]), torch.equal(c, empty[0][0])): t for c, t in encoded}
    assert types == {(True, False): "negative", (False, True): "negative", (False, False): "positive"}


def test_sag_runs_with_the_schedule_and_acts(setup):
    """SAG records the attention of the first uncond chunk and re-evaluates `uncond` on a
    blurred input; with the schedule that `uncond` is the blend. Fails if SAG crashes on the
    blended prompt or is dropped (no change)."""
    model, empty, target, source, bank = setup
    pnp = patches.apply_injection(model, bank)
    with_sag = sample(pnp_guider(HOOKS["sag"](pnp), target, empty, source, 0.5, "linear"), bank, model)
    without = sample(pnp_guider(pnp, target, empty, source, 0.5, "linear"), bank, model)
    assert torch.isfinite(with_sag).all()
    assert harness.rel(with_sag, without) > 0.01


def test_blend_weights():
    """The unconditional prompt handed to ComfyUI: weight 1 is the empty prompt itself (no
    evaluation of the other), 0 the negative itself; in between each prompt's strengths are
    scaled to sum to its weight."""
    a, b, c = ({"strength": 1.0, "n": i} for i in range(3))
    b["strength"] = 3.0
    assert guidance.blended([a], [b, c], 1.0) == [a]
    assert guidance.blended([a], [b, c], 0.0) == [b, c]
    out = guidance.blended([a], [b, c], 0.25)
    assert [e["n"] for e in out] == [0, 1, 2]
    assert [e["strength"] for e in out] == pytest.approx([0.25, 0.75 * 3 / 4, 0.75 * 1 / 4])
