"""Nothing a user types, saves or drops into a folder turns an image black in silence or gets an
error that names the wrong fix: loaded banks are checked once, when loaded (finite values,
floating tables, a schedule falling to 0); NaN and infinite numbers are refused; a bank of
another architecture, an area prompt, a bank of the other wing, and reference latents on one
prompt only are each named as what they are, before any model work."""
import math
import shutil

import comfy.patcher_extension as ext
import comfy.samplers
import nodes as comfy_nodes

import pytest
import torch
from safetensors.torch import save_file

import flux_harness as fh
import harness
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion
from comfyui_pnp.pnp_injection.flow import patches as flux_patches
from comfyui_pnp.pnp_injection.flow import sampling as flux_sampling
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import bank_file, generation, guidance, inversion, patches, sampling

STEPS = 5
UNET_FIX = "Capture the source again and save the bank with PnP Save Feature Bank"
FLUX_FIX = "Invert the source again and save the bank with PnP Flux/Chroma/HunyuanVideo Save Feature Bank"
DAMAGED = r"is a damaged or edited bank file"
# A small Flux.1 (1 double, 2 single blocks) and layers of every kind: image-stream double,
# all-token single (text included) and image-token single.
FLUX_LAYERS = "double.0:v; single.0:v; single.1:k@image"
FLUX_STEPS, FLUX_KEEP = 4, 3


# ---------------------------------------------------------------- helpers

def assert_clean(model):
    """No PnP wrapper on the model and no hook left on any of its modules."""
    for kind in (ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.DIFFUSION_MODEL):
        assert model.get_wrappers(kind, patches.WRAPPER_KEY) == []
        assert model.get_wrappers(kind, flux_patches.WRAPPER_KEY) == []
    assert not any(m._forward_hooks for m in model.model.diffusion_model.modules())


def refuses(model, match, fn):
    """`fn` raises a PnPError matching `match` before any model evaluation, leaving the model clean."""
    with harness.CountCalls(model) as counter, pytest.raises(PnPError, match=match) as err:
        fn()
    assert counter.calls == 0, "the error came after model work"
    assert_clean(model)
    return str(err.value)


def assert_image_like(latent):
    """A result that decodes to an image: finite and not flat (NaN decodes to a black image)."""
    assert torch.isfinite(latent).all(), "NaN or infinite values in the result"
    assert float(latent.float().std()) > 0.1, "a flat result"


def damaged_copy(path, out, edit_tensors=None, edit_meta=None, resign=True):
    """A copy of a bank file with its tensors or metadata edited, written by safetensors directly;
    its checksum computed again (as other software would) unless `resign` is False."""
    shutil.copyfile(path, out)
    harness.rewrite(out, edit_tensors, edit_meta, resign)
    return out


def poke(key, value):
    """An edit that writes `value` into one element of tensor `key`."""
    def edit(tensors):
        t = tensors[key].clone()
        t.view(-1)[t.numel() // 2] = value
        tensors[key] = t
    return edit


def area(conditioning):
    (out,) = comfy_nodes.ConditioningSetArea().append(conditioning, 64, 64, 0, 0, 1.0)
    return out


def area_percentage(conditioning):
    (out,) = comfy_nodes.ConditioningSetAreaPercentage().append(conditioning, 0.5, 0.5, 0.0, 0.0, 1.0)
    return out


def mask(conditioning, set_cond_area):
    m = torch.zeros(1, 128, 128)
    m[:, :64, :64] = 1.0
    (out,) = comfy_nodes.ConditioningSetMask().append(conditioning, m, set_cond_area, 1.0)
    return out


AREA_PROMPTS = {
    "set-area": (area, r"Conditioning \(Set Area\)"),
    "set-area-percentage": (area_percentage, r"Conditioning \(Set Area with Percentage\)"),
    "mask-bounds": (lambda c: mask(c, "mask bounds"), r"Conditioning \(Set Mask\) with set_cond_area \"mask bounds\""),
}
AREA_FIX = r"PnP injects features of the whole latent\. Remove the area from this prompt"


# ---------------------------------------------------------------- U-Net fixtures

@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=STEPS, evaluations=STEPS)
    bank = banks.capture(model, trajectory)
    path = bank_file.save(bank, tmp_path_factory.mktemp("banks") / "good.pnpbank.safetensors")
    return model, empty, trajectory, bank, path


@pytest.fixture(scope="module")
def sdxl():
    model = harness.make_model("sdxl")
    prompt = harness.conditioning("sdxl", seed=5)
    trajectory = inversion.invert(model, harness.latent(), prompt, steps=STEPS, evaluations=STEPS)
    return model, prompt, banks.capture(model, trajectory)


# ---------------------------------------------------------------- A. U-Net banks checked when loaded

@pytest.mark.parametrize("key", ["start", "residual.4", "attention.5.0", "sigmas"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_in_a_unet_bank_is_refused_when_loaded(sd15, tmp_path, key, value):
    """One NaN or infinite value in the start latent, a ResBlock or attention table or the
    schedule: refused by the loader, naming the tensor and the fix. Fails if such a file
    loads (it samples a black image reported as success) or the error blames anything else."""
    *_, path = sd15
    bad = damaged_copy(path, tmp_path / "bad.pnpbank.safetensors", poke(key, value))
    with pytest.raises(PnPError, match=rf"bad\.pnpbank\.safetensors {DAMAGED} \(`{key}`: it holds NaN or infinite "
                                       rf"values\)\. {UNET_FIX}\."):
        bank_file.load(bad)


@pytest.mark.parametrize("key", ["start", "residual.4", "attention.5.0"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8])
def test_tables_of_a_non_floating_dtype_are_refused_when_loaded(sd15, tmp_path, key, dtype):
    """int32, bool or uint8 tables have the right shapes and used to load and sample without
    error. Fails if the loader accepts them or does not name the tensor, its dtype and the fix."""
    *_, path = sd15

    def retype(tensors):
        tensors[key] = tensors[key].to(dtype)
    bad = damaged_copy(path, tmp_path / "typed.pnpbank.safetensors", retype)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(PnPError, match=rf"{DAMAGED} \(`{key}`: it is stored as {name}, not as float32, float16 or "
                                       rf"bfloat16\)\. {UNET_FIX}\."):
        bank_file.load(bad)


@pytest.mark.parametrize("edit", [
    lambda s: s.flip(0),                              # reversed: rising, ends at sigma_0
    lambda s: torch.cat([s[:2], s[1:2], s[3:]]),      # a repeated sigma: not strictly falling
    lambda s: s + 0.01,                               # does not end at 0
    lambda s: torch.cat([s[:1], s[2:3], s[1:2], s[3:]]),  # two steps swapped
], ids=["reversed", "repeated", "not-ending-at-0", "swapped"])
def test_a_unet_schedule_not_falling_to_zero_is_refused_when_loaded(sd15, tmp_path, edit):
    """A schedule in a bank file that does not fall strictly to 0: refused with the fix.
    Fails if it loads (reversed sigmas sample a black image reported as success)."""
    *_, path = sd15

    def resigma(tensors):
        tensors["sigmas"] = edit(tensors["sigmas"])
    bad = damaged_copy(path, tmp_path / "sigmas.pnpbank.safetensors", resigma)
    with pytest.raises(PnPError, match=rf"{DAMAGED} \(`sigmas`: the schedule does not fall strictly to 0 \(.*\)\)\. "
                                       rf"{UNET_FIX}\."):
        bank_file.load(bad)


def test_valid_unet_banks_still_load_and_sample(sd15, tmp_path):
    """The checks refuse nothing a pack wrote: a float32 bank and a float16 one load, and each
    samples the same result as the bank in memory, finite and image-like. Fails if a check
    rejects a good file or the loaded bank samples NaN or a flat latent."""
    model, empty, trajectory, bank, path = sd15
    target = harness.conditioning(seed=1)
    loaded = bank_file.load(path)
    edited = sampling.pnp_sample(model, loaded, target, empty)
    assert torch.equal(edited, sampling.pnp_sample(model, bank, target, empty))
    assert_image_like(edited)

    half = banks.capture(model, trajectory, dtype=torch.float16)
    loaded_half = bank_file.load(bank_file.save(half, tmp_path / "half.pnpbank.safetensors"))
    assert loaded_half.residual[4].dtype == torch.float16
    assert_image_like(sampling.pnp_sample(model, loaded_half, target, empty))


# ---------------------------------------------------------------- A. NaN and infinite numbers

@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_cfg_nan_or_inf_is_refused_before_any_unet_work(sd15, value):
    """cfg NaN samples a NaN latent (a black image); the PnP Sampler, the PnP Guider and PnP
    Generate Source refuse it before any U-Net call. Fails if any of them starts sampling."""
    model, empty, _, bank, _ = sd15
    text = rf"`cfg` is {value}; give a finite number\."
    refuses(model, text, lambda: sampling.pnp_sample(model, bank, empty, empty, value))
    refuses(model, text, lambda: sampling.pnp_sample(model, bank, empty, empty, value, 0.8, 0.5, "ddim", 0.5, "linear"))
    refuses(model, text, lambda: guidance.NegativeScheduleGuider(model, 0.5, "linear").set_cfg(value))
    refuses(model, text, lambda: generation.generate(model, harness.latent(), empty, empty, value, steps=STEPS))


# ---------------------------------------------------------------- B. architecture

def test_a_bank_of_another_unet_architecture_names_it_not_a_block(sd15, sdxl):
    """An SD 1.5 bank on SDXL, and an SDXL bank on SD 1.5: the error says the bank was captured
    on another architecture (which) and to capture again, before any U-Net work. Fails if a
    per-block message ("Output block ... remove it from the layers") comes first."""
    sd_model, empty, _, sd_bank, _ = sd15
    xl_model, xl_prompt, xl_bank = sdxl
    for model, bank, prompt, here in ((xl_model, sd_bank, xl_prompt, "sdxl:SDXL"), (sd_model, xl_bank, empty, "sd1:SD15")):
        text = refuses(model, rf"made on another architecture \({bank.architecture[:4]}.*\), not on this model "
                              rf"\({here}, without the bank's layers\)\. Invert and capture the source again with this model\.",
                       lambda: sampling.pnp_sample(model, bank, prompt, prompt))
        assert "Output block" not in text and "remove it" not in text


# ---------------------------------------------------------------- B. area prompts

@pytest.mark.parametrize("kind", list(AREA_PROMPTS))
def test_area_prompts_on_the_target_are_refused_before_any_unet_work(sd15, kind):
    """An area prompt (Set Area, Set Area with Percentage, Set Mask with mask bounds) as the
    target's positive or negative, through the PnP Sampler and through SamplerCustomAdvanced's
    route (a guider on the patched model): the error names the node and the fix, before any
    U-Net call. Fails if it reaches the U-Net (before: "the latent is 64x64 but the bank 128x128")."""
    model, empty, _, bank, _ = sd15
    make, node = AREA_PROMPTS[kind]
    target = harness.conditioning(seed=1)
    refuses(model, rf"The target's `positive` prompt is an area prompt \({node}\).*{AREA_FIX}",
            lambda: sampling.pnp_sample(model, bank, make(target), empty))
    refuses(model, rf"The target's `negative` prompt is an area prompt \({node}\)",
            lambda: sampling.pnp_sample(model, bank, target, make(empty)))

    patched = patches.apply_injection(model, bank)
    start = sampling.start_latent(model, bank)["samples"]

    def advanced():
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(make(target), empty)
        guider.set_cfg(7.5)
        guider.sample(torch.zeros_like(start), start, comfy.samplers.sampler_object("ddim"), bank.sigmas,
                      disable_pbar=True, seed=0)
    refuses(model, rf"The target's `positive` prompt is an area prompt \({node}\).*{AREA_FIX}", advanced)


@pytest.mark.parametrize("kind", list(AREA_PROMPTS))
def test_area_prompts_for_inversion_and_capture_are_refused_before_any_unet_work(sd15, kind):
    """An area prompt as PnP DDIM Inversion's or PnP Capture Features' prompt: refused with the
    node and the fix before any U-Net call. Fails if inversion or capture run (before: the
    error came at sampling and blamed "a patch on the model (none found)")."""
    model, empty, trajectory, _, _ = sd15
    make, node = AREA_PROMPTS[kind]
    refuses(model, rf"The inversion prompt \(PnP DDIM Inversion's `conditioning`\) is an area prompt \({node}\).*"
                   rf"{AREA_FIX}", lambda: inversion.invert(model, harness.latent(), make(empty), STEPS, STEPS))
    refuses(model, rf"The source prompt of PnP Capture Features is an area prompt \({node}\).*{AREA_FIX}",
            lambda: banks.capture(model, trajectory, conditioning=make(empty)))


def test_a_mask_without_bounds_is_a_whole_latent_prompt_and_still_works(sd15):
    """Set Mask with set_cond_area "default" weighs the whole latent: not refused, and the
    result is finite and image-like. Fails if the area check refuses plain masks."""
    model, empty, _, bank, _ = sd15
    assert_image_like(sampling.pnp_sample(model, bank, mask(harness.conditioning(seed=1), "default"), empty))


def test_a_bank_recorded_on_a_crop_names_the_bank_not_a_patch(sd15, tmp_path):
    """A bank whose ResBlock features were not recorded on the whole latent (written by an older
    version from an area prompt, or by other software) and a model with no other patch: the
    error names the bank and the fix. Fails if it blames "a patch on the model (none found)"."""
    model, empty, _, _, path = sd15

    def crop(tensors):
        tensors["residual.4"] = tensors["residual.4"][..., :2, :2].contiguous()
    cropped = bank_file.load(damaged_copy(path, tmp_path / "crop.pnpbank.safetensors", crop))
    with pytest.raises(PnPError) as err:
        sampling.pnp_sample(model, cropped, harness.conditioning(seed=1), empty)
    text = str(err.value)
    assert "PnP cannot inject the ResBlock of output block 4" in text
    assert "No patch on the model changes the U-Net's shapes" in text and "Capture the source again" in text
    assert "none found" not in text
    assert_clean(model)


# ---------------------------------------------------------------- B. each loader names the other

def test_each_loader_names_the_other_and_only_for_its_format(sd15, flux, tmp_path):
    """The U-Net loader given a Flux bank names PnP Flux/Chroma/HunyuanVideo Load Feature Bank; the Flux loader
    calls only a "pnp-feature-bank" file a U-Net bank, not any safetensors with a `format`
    key (torch's save_file writes format "pt"). Fails if a message names the wrong loader."""
    _, _, _, _, unet_path = sd15
    _, _, flux_path = flux
    with pytest.raises(PnPError, match=r"is a Flux feature bank: load it with PnP Flux/Chroma/HunyuanVideo Load Feature Bank"):
        bank_file.load(flux_path)
    with pytest.raises(PnPError, match=r"is a U-Net feature bank: load it with PnP Load Feature Bank"):
        flux_bank_file.load(unet_path)
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(PnPError, match=r"is not a PnP Flux feature bank file \(its format is 'pt'\): choose a file "
                                       r"written by PnP Flux/Chroma/HunyuanVideo Save Feature Bank") as err:
        flux_bank_file.load(other)
    assert "U-Net" not in str(err.value)
    with pytest.raises(PnPError, match=r"is not a PnP U-Net feature bank file \(its format is 'pt'\)") as err:
        bank_file.load(other)
    assert "Flux" not in str(err.value)


# ---------------------------------------------------------------- Flux

def flux_invert(model, source=None, prompt=None, guidance_value=1.0):
    source = fh.latent() if source is None else source
    prompt = prompt or fh.conditioning(seed=5)
    return flux_inversion.invert(model, source, prompt, FLUX_STEPS, FLUX_KEEP, custom_layers=FLUX_LAYERS,
                                 guidance=guidance_value)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    model = fh.make_flux(seed=3, double=1, single=2)
    bank = flux_invert(model)
    path = flux_bank_file.save(bank, tmp_path_factory.mktemp("flux") / "good.pnpfluxbank.safetensors")
    return model, bank, path


@pytest.mark.parametrize("key", ["noise", "features.double.0.v", "features.single.0.v", "features.single.1.k",
                                 "sigmas"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_in_a_flux_bank_is_refused_when_loaded(flux, tmp_path, key, value):
    """One NaN or infinite value in the inverted noise or any feature table of a Flux bank
    file: refused naming the tensor and the fix. Fails if it loads (a black image)."""
    _, _, path = flux
    bad = damaged_copy(path, tmp_path / "bad.pnpfluxbank.safetensors", poke(key, value))
    with pytest.raises(PnPError, match=rf"{DAMAGED} \(`{key}`: it holds NaN or infinite values\)\. {FLUX_FIX}\."):
        flux_bank_file.load(bad)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_flux_tables_of_a_non_floating_dtype_are_refused_when_loaded(flux, tmp_path, dtype):
    """An int32 or bool feature table loads no more. Fails if it does."""
    _, _, path = flux

    def retype(tensors):
        tensors["features.single.0.v"] = tensors["features.single.0.v"].to(dtype)
    bad = damaged_copy(path, tmp_path / "typed.pnpfluxbank.safetensors", retype)
    with pytest.raises(PnPError, match=rf"`features.single.0.v`: it is stored as {str(dtype)[6:]}, not as float32.*{FLUX_FIX}"):
        flux_bank_file.load(bad)


@pytest.mark.parametrize("edit", [lambda s: s.flip(0), lambda s: s * 0.9, lambda s: torch.cat([s[:2], s[1:2], s[3:]])],
                         ids=["reversed", "not-from-1", "repeated"])
def test_a_flux_schedule_not_falling_from_1_to_0_is_refused_when_loaded(flux, tmp_path, edit):
    """A Flux bank's schedule must fall strictly from 1 (the inverted noise's level) to 0.
    Fails if a reversed, rescaled or repeated schedule loads."""
    _, _, path = flux

    def resigma(tensors):
        tensors["sigmas"] = edit(tensors["sigmas"])
    bad = damaged_copy(path, tmp_path / "sigmas.pnpfluxbank.safetensors", resigma)
    with pytest.raises(PnPError, match=rf"`sigmas`: the schedule does not fall strictly from 1\.0 to 0 .*{FLUX_FIX}"):
        flux_bank_file.load(bad)


@pytest.mark.parametrize("key, needed", [("double.0.v", 64), ("single.0.v", 64 + 8), ("single.1.k", 64)])
def test_a_flux_bank_with_too_few_tokens_is_refused_when_loaded(flux, tmp_path, key, needed):
    """A table cut to fewer tokens than its 128x128 px source has (64 image tokens, plus 8 text
    tokens for all-token layers): refused as damaged when loaded. Fails if it loads (it then
    blamed Kontext's reference latents at sampling)."""
    _, _, path = flux

    def cut(tensors):
        tensors[f"features.{key}"] = tensors[f"features.{key}"][:, :, :needed - 1].contiguous()
    bad = damaged_copy(path, tmp_path / "cut.pnpfluxbank.safetensors", cut)
    with pytest.raises(PnPError, match=rf"{DAMAGED} \(`features\.{key}`: its shape is \[6, 1, {needed - 1}, 64\] where "
                                       rf"the metadata gives \[6, 1, {needed}, 64\].*{FLUX_FIX}"):
        flux_bank_file.load(bad)


def test_a_valid_flux_bank_still_loads_and_samples(flux):
    """The checks refuse nothing the pack wrote: the saved bank loads and samples as the bank in
    memory, finite and image-like. Fails if a check rejects a good file or the result is NaN/flat."""
    model, bank, path = flux
    target = fh.conditioning(seed=1)
    loaded = flux_bank_file.load(path)
    edited = flux_sampling.pnp_sample(model, loaded, target, 5.0, FLUX_KEEP)
    assert torch.equal(edited, flux_sampling.pnp_sample(model, bank, target, 5.0, FLUX_KEEP))
    assert_image_like(edited)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_flux_guidance_nan_or_inf_is_refused_before_any_model_work(flux, value):
    """Flux guidance NaN gives a NaN latent: PnP Flux/Chroma/HunyuanVideo Sampler and PnP Flux/Chroma/HunyuanVideo Inversion refuse it
    before any model call. Fails if either runs the model."""
    model, bank, _ = flux
    text = rf"`guidance` is {value}; give a finite number\."
    refuses(model, text, lambda: flux_sampling.pnp_sample(model, bank, fh.conditioning(seed=1), value, FLUX_KEEP))
    refuses(model, text, lambda: flux_invert(model, guidance_value=value))


@pytest.mark.parametrize("kind", list(AREA_PROMPTS))
def test_flux_area_prompts_are_refused_before_any_model_work(flux, kind):
    """An area prompt as PnP Flux/Chroma/HunyuanVideo Inversion's or PnP Flux/Chroma/HunyuanVideo Sampler's prompt: refused with the
    node and the fix before any model call. Fails if the model runs."""
    model, bank, _ = flux
    make, node = AREA_PROMPTS[kind]
    refuses(model, rf"The inversion prompt \(PnP Flux/Chroma/HunyuanVideo Inversion's `conditioning`\) is an area prompt \({node}\).*"
                   rf"{AREA_FIX}", lambda: flux_invert(model, prompt=make(fh.conditioning(seed=5))))
    refuses(model, rf"The target prompt \(PnP Flux/Chroma/HunyuanVideo Sampler's `positive`\) is an area prompt \({node}\).*{AREA_FIX}",
            lambda: flux_sampling.pnp_sample(model, bank, make(fh.conditioning(seed=1)), 5.0, FLUX_KEEP))


def test_reference_latents_on_one_prompt_name_which_prompt_has_them(flux):
    """Reference latents (Kontext) on the target's prompt only: the error says this call has
    more image tokens and that the target carries them; on the inversion's only: that the
    inversion's calls had more. Neither blames the text or a damaged bank. Fails if the
    direction is wrong or the count of extra image tokens is not the reference's 64."""
    model, bank, _ = flux
    target = fh.conditioning(seed=1)
    with pytest.raises(PnPError) as err:
        flux_sampling.pnp_sample(model, bank, fh.with_reference(target), 5.0, FLUX_KEEP)
    assert "this call has 64 image tokens more than the inversion's: the target prompt carries reference latents" \
        in str(err.value)
    assert_clean(model)
    reference_bank = flux_invert(model, prompt=fh.with_reference(fh.conditioning(seed=5)))
    with pytest.raises(PnPError) as err:
        flux_sampling.pnp_sample(model, reference_bank, target, 5.0, FLUX_KEEP)
    assert ("the inversion's calls had 64 image tokens more than this one: PnP Flux/Chroma/HunyuanVideo Inversion's prompt carried "
            "reference latents") in str(err.value)
    assert_clean(model)
    both = flux_sampling.pnp_sample(model, reference_bank, fh.with_reference(target), 5.0, FLUX_KEEP)
    assert_image_like(both)
    assert not math.isnan(float(both.sum()))
