"""The rectified-flow fixtures (tests/rf_families.py, tests/rf_twins.py): every family of the host whose model
sampling is CONST, as a shrunk real host model that the host's own samplers run, and the diffusers twins
that give the host's velocity independently. These are the models the velocity-level edits (FlowEdit,
UniEdit-Flow, RF-Inversion) are proven on."""
import pytest
import torch

import comfy.model_detection
import comfy.model_sampling
import comfy.samplers
import comfy.supported_models as sm

import rf_families as rf
import rf_twins as tw

STEPS = 3
SIZE = (6, 10)          # latent cells: 3x5 tokens with 2x2 patches (both odd), 6x10 with patch 1
FRAMES = 3              # latent frames of the video families
SLOW = {"flux2"}        # Flux.2 evaluates 512 text tokens (its model pads to 512) in 56 blocks: 0.35 s a row


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.fixture(scope="module")
def models():
    """One model per family, built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = rf.make(name)
        return cache[name]
    return get


def inputs(model, batch=2, size=SIZE, seed=2):
    """A MODEL-space latent on the flow path at a mid level (0.7 source + 0.3 noise), `batch` rows."""
    frames = FRAMES if rf.is_video(model) else None
    z = model.model.process_latent_in(rf.latent(model, seed=seed, size=size, frames=frames, batch=batch))
    return 0.7 * z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + 10))


def cheap_model_type(config_class):
    """The ModelSampling the host gives a config class's model, without building its network (the host's
    own `disable_unet_model_creation`); None where get_model needs real weights (SD1.x/SDXL UNets,
    Stable Zero123, Stable Audio: none of them flow models)."""
    try:
        model = config_class(dict(config_class.unet_config, disable_unet_model_creation=True)).get_model({})
    except Exception:
        return None
    return model.model_sampling


def test_these_are_exactly_the_hosts_rectified_flow_families():
    """Every family here has CONST model sampling in the host, and every other CONST class of the host is
    listed in rf_families.OTHER_CONST (with why it has no fixture). Fails when a family here is not CONST,
    or when the host defines a CONST class that is neither built nor listed (a newer host's new family).
    CosmosPredict2 is rectified flow in name but COSMOS_RFLOW, not CONST: it is not a family the edits
    support."""
    const = {cls.__name__ for cls in sm.models
             if isinstance(cheap_model_type(cls), comfy.model_sampling.CONST)}
    ours = {rf.SPECS[name].config_class.__name__ for name in rf.FAMILIES}
    assert ours <= const, f"not CONST in this host: {sorted(ours - const)}"
    assert const - ours == set(rf.OTHER_CONST), f"unlisted CONST classes: {sorted(const - ours - set(rf.OTHER_CONST))}"
    cosmos = cheap_model_type(sm.CosmosT2IPredict2)
    assert isinstance(cosmos, comfy.model_sampling.COSMOS_RFLOW) and not isinstance(cosmos, comfy.model_sampling.CONST)


@pytest.mark.parametrize("name", rf.FAMILIES)
def test_each_family_is_the_hosts_own_const_model(models, name):
    """The ModelPatcher's model sampling is CONST; the host's model detection maps the shrunk unet_config
    back to the family's supported_models class (except Z-Image, which the host tells from Lumina 2 by its
    real width 3840 alone); latents have the family's channels and dimensionality; the conditioning carries
    what the family's extra_conds reads. Fails if a builder builds another class, loses CONST, or hands the
    model a conditioning or latent of the wrong layout."""
    model = models(name)
    assert rf.family_of(model) == name
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.CONST)
    config = model.model.model_config
    detected = comfy.model_detection.model_config_from_unet_config(dict(config.unet_config))
    expected = sm.Lumina2 if name == "z_image" else rf.SPECS[name].config_class
    assert type(detected) is expected
    user = rf.latent(model)
    channels = model.model.latent_format.latent_channels
    if rf.is_video(model):
        assert user.shape == (1, channels, FRAMES) + SIZE
    elif name == "qwen_image":
        assert user.shape == (1, channels, 1) + SIZE
    else:
        assert user.shape == (1, channels) + SIZE
    z = model.model.process_latent_in(user)
    assert 0.7 < float(z.std()) < 1.3      # unit scale in model space
    context, extras = rf.conditioning(model)[0]
    assert context.ndim == 3 and context.shape[:2] == (1, 8)
    assert "pooled_output" in extras
    if name in ("flux", "sd3", "hunyuan_video", "hidream"):
        assert extras["pooled_output"] is not None
    if name == "ltxv":
        assert extras["attention_mask"].shape == (1, 8) and extras["attention_mask"].sum() == 4
    assert rf.guidance_distilled(model) == (name in ("flux", "flux2", "hunyuan_video"))


def sample(model, positive, negative, cfg, guidance=None, seed=0):
    """Plain Euler through the host: CFGGuider, sampler_object("euler"), the model's `simple` schedule of
    STEPS steps from sigma 1 (text to image/video); the latent image is zeros (multiplied by 0 at sigma 1).
    Both rows of the batch share one noise, so rows differ only by their prompt."""
    batch = positive[0][0].shape[0]
    shape = rf.latent(model, frames=FRAMES if rf.is_video(model) else None).shape[1:]
    noise = torch.randn((1,) + shape, generator=torch.Generator().manual_seed(seed)).repeat(batch, *[1] * len(shape))
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(tw.with_guidance(positive, guidance), tw.with_guidance(negative, guidance))
    guider.set_cfg(cfg)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                         disable_pbar=True, seed=seed)


def two_prompts(model, seeds=(1, 5), start=None):
    """One CONDITIONING whose two rows are two prompts (same token count)."""
    a, b = (rf.conditioning(model, seed=s, start=start) for s in seeds)
    extras = {k: (torch.cat([v, b[0][1][k]]) if torch.is_tensor(v) and k not in ("concat_latent_image", "concat_mask")
                  else v) for k, v in a[0][1].items()}
    if "clip_vision_output" in extras:
        vision = type(extras["clip_vision_output"])()
        vision.penultimate_hidden_states = torch.cat([a[0][1]["clip_vision_output"].penultimate_hidden_states,
                                                      b[0][1]["clip_vision_output"].penultimate_hidden_states])
        extras["clip_vision_output"] = vision
    return [[torch.cat([a[0][0], b[0][0]]), extras]]


# measured prompt effect of STEPS Euler steps (rows of one batch, same noise), relative L2
PROMPT_EFFECT = 0.05


@pytest.mark.parametrize("name", params(rf.FAMILIES))
def test_plain_euler_sampling_is_finite_and_follows_the_prompt(models, name):
    """3 Euler steps of the host's `simple` schedule from pure noise, a batch of two rows with two prompts
    and one noise: finite, the family's latent shape, and the two rows more than 5% apart (measured: AuraFlow
    8.6%, HunyuanVideo 1.5 and Flux.2 10%, Chroma 32%, Qwen-Image 46%, Z-Image 56%, the others 80% to 143%).
    CFG 3 against a third prompt for the CFG families; CFG 1 with embedded guidance 3.5 for the
    guidance-distilled ones. Fails if the model
    ignores its prompt (a silenced cross-attention or text path), or the host cannot sample the family."""
    model = models(name)
    start = rf.latent(model, frames=FRAMES) if name == "wan21_i2v" else None
    positive = two_prompts(model, start=start)
    negative = rf.conditioning(model, seed=9, start=start)
    if rf.guidance_distilled(model):
        out = sample(model, positive, negative, 1.0, guidance=3.5)
    else:
        out = sample(model, positive, negative, 3.0)
    assert torch.isfinite(out).all()
    assert out.shape[1:] == rf.latent(model, frames=FRAMES if rf.is_video(model) else None).shape[1:]
    effect = tw.rel(out[1], out[0])
    print(f"{name}: prompt effect {effect:.3f}")
    assert effect > PROMPT_EFFECT, f"{name}: rows of two prompts differ by {effect:.3g}"


@pytest.mark.parametrize("name", params(rf.FAMILIES))
def test_the_host_velocity_is_its_raw_output_and_rows_are_independent(models, name):
    """At sigma 0.3: the host's own denoised equals x - sigma * host_velocity (CONST: the raw output IS the
    velocity, bit for bit), and a prompt evaluated in ONE model call with another (as cond and uncond are)
    gives the velocity it gives in a call of its own (within 1e-5: batching does not mix rows). Prompts of
    different token counts cannot share a call (CONDRegular concatenates equal shapes only): two calls,
    except on Flux.2, whose model pads every context to 512 tokens. The velocity moves with the latent and
    with sigma (by more than 2%). Fails if the velocity read at the diffusion model is not the host's, rows
    interact, or the model ignores its input or its time."""
    model = models(name)
    x = inputs(model, batch=1)
    start = rf.latent(model, frames=FRAMES) if name == "wan21_i2v" else None
    a, b = rf.conditioning(model, seed=1, start=start), rf.conditioning(model, seed=5, start=start)
    shorter = rf.conditioning(model, seed=5, tokens=6, start=start)
    batched, calls = [], []
    together = tw.host_velocities(model, x, 0.3, [a, b], calls=batched)
    apart = tw.host_velocities(model, x, 0.3, [a, shorter], calls=calls)
    assert batched == [2]
    # Flux.2's extra_conds pads every context to 512 tokens, so its prompts of any length under 512 batch
    assert calls == ([2] if name == "flux2" else [1, 1])
    assert all(torch.isfinite(v).all() for v in together + apart)
    alone = apart[0] if calls == [1, 1] else tw.host_velocity(model, x, 0.3, a)
    assert tw.rel(together[0], alone) < 1e-5
    assert tw.rel(together[1], apart[1]) > 1e-3   # (another prompt: the rows are not all the same)
    assert torch.equal(tw.host_denoised(model, x, 0.3, a), x - 0.3 * alone)
    # the velocity depends on the latent and on sigma (no zero gate or output layer makes it constant): one
    # call of two rows, another latent at 0.3 and this one at 0.6 (per-row sigmas, as the host allows)
    moved = tw.host_velocity(model, torch.cat([inputs(model, batch=1, seed=7), x]), torch.tensor([0.3, 0.6]), a)
    assert tw.rel(moved[:1], alone) > 0.02 and tw.rel(moved[1:], alone) > 0.02


@pytest.fixture(scope="module")
def twins(models):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = tw.make_twin(models(name))
        return cache[name]
    return get


@pytest.mark.parametrize("name", params(tw.TWINS))
def test_the_diffusers_twin_gives_the_host_velocity(models, twins, name):
    """The host's velocity (CFGGuider + calc_cond_batch, two prompts in ONE batched model call as under CFG,
    each on a batch of 2 latents) equals the diffusers twin's (the same weights through diffusers' own key
    converters) within 1e-5 relative (Z-Image 3e-5: rf_twins.TOLERANCE) at sigma 0.3 and at sigma 0, on a
    6x10 latent (3x5 tokens of 2x2, 6x10 of patch 1; 3 latent frames for video), except where
    rf_twins.TWIN_SIZE says the twin needs another size. Guidance-distilled families at embedded guidance 4.
    Measured in the report. Fails on any disagreement in time scaling or direction, guidance scaling,
    packing, rope, text handling or the sign."""
    model, net = models(name), twins(name)
    size = tw.TWIN_SIZE.get(name, SIZE)
    x = inputs(model, batch=2, size=size)
    prompts = [rf.conditioning(model, seed=3, tokens=7), rf.conditioning(model, seed=4, tokens=7)]
    guidance = 4.0 if rf.guidance_distilled(model) else None
    worst = 0.0
    for sigma in (0.3, 0.0):
        calls = []
        host = tw.host_velocities(model, x, sigma, prompts, guidance=guidance, calls=calls)
        assert calls == [4]
        for h, prompt in zip(host, prompts):
            twin = tw.twin_velocity(net, model, x, sigma, prompt, guidance=guidance)
            assert torch.isfinite(h).all() and h.abs().mean() > 0.1
            worst = max(worst, tw.rel(twin, h))
    print(f"{name}: worst relative error {worst:.3g}")
    assert worst < tw.TOLERANCE.get(name, 1e-5), f"{name}: twin and host differ by {worst:.3g}"


@pytest.mark.parametrize("name", ["qwen_image", "auraflow"])
def test_image_positions_are_centred_unlike_diffusers_on_odd_token_grids(models, twins, name):
    """Qwen-Image's rope: the host centres image positions as arange(n) - n // 2 (ldm/qwen_image/model.py
    process_img), diffusers' QwenEmbedRope (the official pipeline's) as -(n - n // 2) .. n // 2 - 1. AuraFlow's
    learned positional table: the host crops it from (n_max - n) // 2 (ldm/aura/mmdit.py apply_pos_embeds),
    diffusers from n_max // 2 - n // 2. Both agree for even token counts only: on a 6x10 latent (3x5 tokens)
    twin and host differ by more than 1% (measured: Qwen-Image 7%, AuraFlow 40%), while on 8x12 (4x6 tokens,
    rf_twins.TWIN_SIZE) test_the_diffusers_twin_gives_the_host_velocity finds them equal to 1e-5. Fails when
    either side changes its convention."""
    model, net = models(name), twins(name)
    assert tw.TWIN_SIZE[name] == (8, 12)
    prompt = rf.conditioning(model, seed=3, tokens=7)
    odd = inputs(model, batch=1, size=(6, 10))
    assert tw.rel(tw.twin_velocity(net, model, odd, 0.3, prompt), tw.host_velocity(model, odd, 0.3, prompt)) > 0.01
