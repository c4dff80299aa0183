"""RF-Solver-Edit's official video edit on HunyuanVideo through the PnP Flux nodes, against an
independent implementation on diffusers' HunyuanVideoTransformer3DModel with the same weights
(tests/hunyuan_reference.py), on a shrunk host HunyuanVideo with the real block counts (20 double,
40 single) and a clip of 3 latent frames."""
import contextlib

import pytest
import torch

import flux_harness
import harness
import hunyuan_reference as ref
from comfyui_pnp.nodes.flux import PnPFluxApplyInjection, PnPFluxInversion, PnPFluxSampler
from comfyui_pnp.pnp_injection import PnPError, disk, placement
from comfyui_pnp.pnp_injection.flow import bank as flux_banks
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import families as flux_families
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.flow import text_padding

STEPS, INJECT, GUIDANCE = 4, 3, 6.0


@pytest.fixture(scope="module")
def clip():
    model = ref.make_hunyuan_video()
    source = ref.video_latent()
    source_prompt, target = ref.conditioning_for(model, seed=5), ref.conditioning_for(model, seed=1)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, STEPS, INJECT, 1.0, "rf-solver-edit",
                                       "rf_solver", "official").result

    def edit(inject):
        (out,) = PnPFluxSampler.execute(model, bank, target, GUIDANCE, inject).result
        return out["samples"]
    return dict(model=model, source=source, source_prompt=source_prompt, target=target, bank=bank, edit=edit,
                out=edit(INJECT), plain=edit(0))


def test_the_official_video_edit(clip):
    """The official layers (V of all tokens, single blocks 21-39), schedule (shift 7) and solver: within
    1e-3 of the reference, both prompts (8 tokens each) padded to 256 and masked as the official code
    (measured 1.2e-6 at 4 steps, inject 3); injection moves the clip by more than 5% (measured 6.6% at
    inject 3 of 4); the reference with blocks 22-39 is caught."""
    bank = clip["bank"]
    assert [s.block for s in bank.layers.sites] == list(range(21, 40))
    assert torch.allclose(bank.sigmas, torch.tensor(ref.official_sigmas(STEPS)), atol=1e-6)
    expected = ref.rf_solver_edit_video(clip["model"], clip["source"], clip["source_prompt"], clip["target"],
                                        bank.sigmas.tolist(), INJECT, GUIDANCE)
    assert harness.rel(clip["out"], expected) < 1e-3
    assert harness.rel(clip["out"], clip["plain"]) > 0.05
    moved = ref.rf_solver_edit_video(clip["model"], clip["source"], clip["source_prompt"], clip["target"],
                                     bank.sigmas.tolist(), INJECT, GUIDANCE, blocks=range(22, 40))
    assert harness.rel(clip["out"], moved) > 1e-3


def test_inject_0_is_plain_sampling_bit_for_bit(clip):
    plain = flux_harness.plain_sample(clip["model"], clip["bank"], clip["target"], GUIDANCE)
    assert torch.equal(clip["plain"], plain.to(clip["plain"]))


def frame_steps(x):
    """Relative change from each latent frame to the next."""
    return [harness.rel(x[:, :, t + 1], x[:, :, t]) for t in range(x.shape[2] - 1)]


def test_every_frame_is_edited_and_the_clip_stays_as_consistent_as_the_source(clip):
    """Each latent frame of the edit differs from the plain edit (injection off) by more than 2%
    (measured per frame below); the edit's frame-to-frame change, against the source clip's own, is
    what a video user sees as flicker: measured, and bounded loosely (random weights)."""
    out, plain, source = clip["out"], clip["plain"], clip["source"]
    per_frame = [harness.rel(out[:, :, t], plain[:, :, t]) for t in range(out.shape[2])]
    assert min(per_frame) > 0.02, per_frame
    edit_steps, source_steps = frame_steps(out), frame_steps(source)
    ratio = sum(edit_steps) / sum(source_steps)
    print(f"per-frame change by injection {per_frame}; frame-to-frame: edit {edit_steps}, source {source_steps}, "
          f"ratio {ratio:.2f}")
    assert ratio < 1.0  # measured 0.74; 1.0: the source clip's own flicker (35% margin); 20% fresh noise gives 1.11


def test_limits(clip, tmp_path, monkeypatch):
    """Another frame count and an image model refuse the video bank before any model work; an image
    latent and a latent of an odd height (which the host's HunyuanVideo cannot cut into patches) are refused by
    HunyuanVideo, and so is a mask (on the source or the sampler: masks edit images); interrupts stop inversion and sampling; the estimate equals the
    bank and refuses one that cannot fit; a saved video bank loads whole."""
    model, bank, source = clip["model"], clip["bank"], clip["source"]
    assert flux_banks.estimate_bytes(model, bank.layers, source.shape, bank.text_tokens, bank.slots) == \
        placement.nbytes(bank.tables.values())
    loaded = flux_bank_file.load(flux_bank_file.save(bank, tmp_path / "v.pnpfluxbank.safetensors"))
    assert all(torch.equal(loaded.tables[k], t) for k, t in bank.tables.items()) and loaded.noise.shape == source.shape

    def invert(latent=source):
        return flux_inversion.invert(model, latent, clip["source_prompt"], STEPS, INJECT)
    assert flux_harness.interrupted_after(model, 3, invert) == 3
    assert flux_harness.interrupted_after(model, 2, lambda: clip["edit"](INJECT)) == 2
    with harness.CountCalls(model) as calls:
        with pytest.raises(PnPError, match="latent frames"):
            flux_harness.custom_advanced(model, bank, clip["target"], latent_image=source[:, :, :2])
        with pytest.raises(PnPError, match="HunyuanVideo edits a video latent"):
            invert(source[:, :, 0])
        with pytest.raises(PnPError, match="resize the frames to multiples of 16 pixels"):
            invert(source[..., :7, :])  # an odd latent height: the host's model would fail on its patches
        mask = torch.ones(1, *source.shape[-2:])
        with pytest.raises(PnPError, match="Masks edit images; this latent is a video"):  # the source's noise_mask
            flux_inversion.invert(model, source, clip["source_prompt"], STEPS, INJECT, mask=mask)
        with pytest.raises(PnPError, match="Masks edit images; this latent is a video"):  # the sampler's mask
            PnPFluxSampler.execute(model, bank, clip["target"], GUIDANCE, INJECT, mask)
        monkeypatch.setattr(placement, "available_bytes", lambda device: 1000)
        monkeypatch.setattr(disk, "free_bytes", lambda folder=None: 1000)  # no placement fits
        with pytest.raises(PnPError, match="fits in no placement.*shrink the bank"):
            invert()
    assert calls.calls == 0
    with pytest.raises(PnPError, match="another architecture"):
        loaded.check_injection(flux_harness.make_flux(), 1)


# --- prompts of unequal length: padded to 256 tokens and masked as the official code (flow/text_padding.py) ---------

# The host's HunyuanVideo text encoder gives the empty prompt (the official run_jeep.sh's source) 2 llama tokens
# (<|end_header_id|> <|eot_id|>) and "A pink porsche" 6; the official code pads both to 256 tokens.
EMPTY, TARGET = 2, 6


@pytest.fixture(scope="module")
def unequal():
    """The official example's shape of prompts: an empty source prompt (2 tokens) and a longer target (6 tokens)."""
    model = ref.make_hunyuan_video()
    source = ref.video_latent()
    source_prompt = ref.conditioning_for(model, seed=5, tokens=EMPTY)
    target = ref.conditioning_for(model, seed=1, tokens=TARGET)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, STEPS, INJECT, 1.0, "rf-solver-edit",
                                       "rf_solver", "official").result

    def edit(inject, prompt=target):
        (out,) = PnPFluxSampler.execute(model, bank, prompt, GUIDANCE, inject).result
        return out["samples"]

    def reference(masking="official", source_prompt=source_prompt, prompt=target):
        return ref.rf_solver_edit_video(model, source, source_prompt, prompt, bank.sigmas.tolist(), INJECT, GUIDANCE,
                                        net=net, masking=masking)
    net = ref.diffusers_twin(model)
    return dict(model=model, source=source, source_prompt=source_prompt, target=target, bank=bank, edit=edit,
                reference=reference, out=edit(INJECT), plain=edit(0))


def test_an_empty_source_prompt_gets_the_official_all_token_edit(unequal):
    """The official example's prompts (an empty source, a longer target): the bank holds the video and the 256 padded
    text tokens; the edit is within 1e-4 of the official code on the twin, which pads both prompts and masks the
    padding (measured 1.4e-6); injection moves the clip by more than 3% (measured 4.7%). The reference with the
    padding left unmasked (measured 0.76 away) and with the padding attending to the prompt in the blocks (as the host
    and diffusers mask it; 6.9e-3 away) are both caught: the target's prompt tokens past the source's take the source
    padding's V, so how the padding is computed shows in the edit. Fails if the pack leaves the padding unmasked,
    pools it into the refiner's mean (2.4e-2 away), lets it attend to the prompt (3.9e-3), injects the source's text
    at other positions, or leaves a hook behind."""
    bank, net = unequal["bank"], unequal["model"].model.diffusion_model
    assert bank.text_tokens == ref.OFFICIAL_TEXT
    video = flux_banks.image_count(unequal["source"].shape, (1, 2, 2))
    assert {t.shape[2] for t in bank.tables.values()} == {video + ref.OFFICIAL_TEXT}
    official = unequal["reference"]()
    assert harness.rel(unequal["out"], official) < 1e-4
    assert harness.rel(unequal["out"], unequal["plain"]) > 0.03
    assert harness.rel(unequal["out"], unequal["reference"]("none")) > 0.1
    assert harness.rel(unequal["out"], unequal["reference"]("keys only")) > 1e-3
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())  # the patches are scoped


def test_a_source_prompt_longer_than_the_target_and_the_advanced_route(unequal):
    """A target shorter than the source (3 tokens on a 6-token source prompt's bank) gets the official edit too
    (measured 1.1e-6), and there the padding's own attention cannot show: the target's prompt tokens take the
    source's prompt V (the reference whose padding attends to the prompt agrees, within 1e-4). SamplerCustomAdvanced
    with PnP Flux/Chroma/HunyuanVideo Apply Feature Injection serves a longer target as PnP Flux/Chroma/HunyuanVideo Sampler does (the same edit, within
    1e-5). Fails if the pack's pooling ignores the mask (1.5e-2 away), if a target shorter than the bank's text is
    refused or takes other tokens than the bank's first, or if the advanced route does not inject."""
    model, source = unequal["model"], unequal["source"]
    longer = ref.conditioning_for(model, seed=5, tokens=TARGET)
    shorter = ref.conditioning_for(model, seed=1, tokens=3)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, longer, STEPS, INJECT, 1.0, "rf-solver-edit",
                                       "rf_solver", "official").result
    (out,) = PnPFluxSampler.execute(model, bank, shorter, GUIDANCE, INJECT).result
    official = unequal["reference"](source_prompt=longer, prompt=shorter)
    assert harness.rel(out["samples"], official) < 1e-4
    assert harness.rel(official, unequal["reference"]("keys only", source_prompt=longer, prompt=shorter)) < 1e-4
    (patched,) = PnPFluxApplyInjection.execute(model, unequal["bank"], INJECT).result
    advanced = flux_harness.custom_advanced(patched, unequal["bank"], unequal["target"], guidance=GUIDANCE,
                                            latent_image=torch.zeros_like(source))
    assert harness.rel(advanced, unequal["out"]) < 1e-5


def test_padding_left_unmasked_is_caught(unequal, monkeypatch):
    """The mutation: the pack pads the prompts but masks nothing (the host's plain mean over the padded text, every
    token attending to every other): the edit moves far from the official one (measured 0.61; more than 0.1), so the
    fidelity test above fails on it."""
    monkeypatch.setattr(text_padding.OfficialMask, "pooling", lambda self: contextlib.nullcontext())
    monkeypatch.setattr(text_padding.OfficialMask, "attention", lambda self, func, *a, **k: self.run(func, *a, **k))
    monkeypatch.setattr(text_padding.OfficialMask, "check", lambda self: None)
    model, source = unequal["model"], unequal["source"]
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, unequal["source_prompt"], STEPS, INJECT, 1.0,
                                       "rf-solver-edit", "rf_solver", "official").result
    (out,) = PnPFluxSampler.execute(model, bank, unequal["target"], GUIDANCE, INJECT).result
    assert harness.rel(out["samples"], unequal["out"]) > 0.1


def test_padding_limits(unequal, monkeypatch):
    """A target prompt longer than the source's padded 256 tokens, and one that arrives with a padding mask of another
    node's, are refused before any model work, naming the fix (such a source prompt at the inversion's first model
    call, before the network runs); '@image' layers carry no text and pad nothing; a source prompt over 256 tokens
    is not cut (a target up to its length is served); and the host's refiner pools and attends as the padding
    expects: a host that changed either is refused, not followed. Fails if any of these passes silently."""
    model, bank = unequal["model"], unequal["bank"]
    net = model.model.diffusion_model
    masked = [[torch.cat([unequal["target"][0][0], torch.zeros(1, 2, ref.CONTEXT)], 1),
               {**unequal["target"][0][1], "attention_mask": torch.tensor([[1] * TARGET + [0, 0]])}]]
    with harness.CountCalls(model) as calls:
        with pytest.raises(PnPError, match="shorten the target prompt to at most 256 llava-llama-3 tokens"):
            unequal["edit"](INJECT, ref.conditioning_for(model, seed=1, tokens=257))
        with pytest.raises(PnPError, match="carries an attention mask over some of its tokens"):
            unequal["edit"](INJECT, masked)
    assert calls.calls == 0
    with harness.CountCalls(model) as calls:  # the source prompt: at the inversion's first model call
        with pytest.raises(PnPError, match="carries an attention mask over some of its tokens"):
            flux_inversion.invert(model, unequal["source"], masked, STEPS, INJECT)
    assert calls.calls == 1
    image_only = flux_layers.parse_custom("single.21-39:v@image")
    assert text_padding.length(net, image_only, 7) == 7
    assert text_padding.length(net, bank.layers, 7) == 256 and text_padding.length(net, bank.layers, 300) == 300
    assert flux_families.text_tokens("hunyuan_video", 7, 300) == 300 != flux_families.text_tokens("hunyuan_video", 301, 300)
    assert text_padding.length(flux_harness.make_flux().model.diffusion_model, bank.layers, 7) == 7  # Flux.1: as is
    padded = torch.cat([torch.ones(1, 2, ref.CONTEXT), torch.zeros(1, 2, ref.CONTEXT)], 1)  # plain mean 0.5
    with text_padding.OfficialMask(net, 2, padded, {}).pooling():
        net.txt_in.c_embedder(torch.full((1, ref.CONTEXT), 0.5))  # the host's plain mean: taken
    with pytest.raises(PnPError, match="pools the text otherwise than by its plain mean"):
        with text_padding.OfficialMask(net, 2, padded, {}).pooling():
            net.txt_in.c_embedder(torch.ones(1, ref.CONTEXT))  # a host pooling the masked mean itself: refused
    monkeypatch.setattr(text_padding, "OVERRIDE", "a_name_the_host_does_not_read")  # its attention not overridden
    with pytest.raises(PnPError, match="ran 0 of its 2 refiner and 0 of its 60 block attention calls"):
        flux_inversion.invert(model, unequal["source"], unequal["source_prompt"], STEPS, INJECT)
