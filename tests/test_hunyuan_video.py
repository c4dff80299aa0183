"""RF-Solver-Edit's official video edit on HunyuanVideo through the PnP Flux nodes, against an
independent implementation on diffusers' HunyuanVideoTransformer3DModel with the same weights
(tests/hunyuan_reference.py), on a shrunk host HunyuanVideo with the real block counts (20 double,
40 single) and a clip of 3 latent frames."""
import pytest
import torch

import flux_harness
import harness
import hunyuan_reference as ref
from comfyui_pnp.nodes.flux import PnPFluxInversion, PnPFluxSampler
from comfyui_pnp.pnp_injection import PnPError, placement
from comfyui_pnp.pnp_injection.flow import bank as flux_banks
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion

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
    1e-3 of the reference (measured 1.2e-6 at 4 steps, inject 2); injection moves the clip by more than
    5% (measured 6.6% at inject 3 of 4); the reference with blocks 22-39 is caught."""
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
    assert ratio < 3.0


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
        with pytest.raises(PnPError, match="Shrink the bank"):
            invert()
    assert calls.calls == 0
    with pytest.raises(PnPError, match="another architecture"):
        loaded.check_injection(flux_harness.make_flux(), 1)
