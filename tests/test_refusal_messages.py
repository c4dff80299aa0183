"""A refusal never sends the user to a node that also refuses (issue 27): each message names nodes
that exist, and what it advises (a node, a preset, an input) accepts the same bank or input."""
import dataclasses
import re

import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import BasicGuider, DisableNoise, KSamplerSelect, SamplerCustomAdvanced
from comfy_extras.nodes_flux import FluxGuidance
from comfy_extras.nodes_mask import GrowMask, InvertMask

import flux_harness as fh
import harness
import hunyuan_reference
import rf_families
from host import run_node
from comfyui_pnp.nodes import NODE_IDS, NODES
from comfyui_pnp.nodes.bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from comfyui_pnp.nodes.capture import PnPCaptureFeatures
from comfyui_pnp.nodes.flux import (PnPFluxApplyInjection, PnPFluxFireFlowInversion, PnPFluxFireFlowSampler,
                                    PnPFluxInversion, PnPFluxLoadBank, PnPFluxNoise, PnPFluxSampler, PnPFluxSaveBank,
                                    PnPRFSolverSampler)
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion, PnPFluxKVEditSampler
from comfyui_pnp.nodes.injection import PnPApplyInjection, PnPSampler, PnPSigmas
from comfyui_pnp.nodes.inversion import PnPInversion
from comfyui_pnp.nodes.velocity import PnPFlowEdit, PnPRFInversion, PnPUniEdit
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import families as flux_families
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.unet import bank as unet_banks
from comfyui_pnp.pnp_injection.unet import families as unet_families
from comfyui_pnp.pnp_injection.unet import inversion as unet_inversion
from comfyui_pnp.pnp_injection.unet import layers as unet_layers

OURS = {node.define_schema().display_name: node for node in NODES}
CORE = {"GrowMask": GrowMask, "InvertMask": InvertMask}  # the host's nodes the messages name
KV_NODES = ["PnP Flux Sampler (KV-Edit)", "PnP Flux Inversion (KV-Edit)"]  # a KV-Edit bank's refusal names them


# Names that stand for every node of theirs: "PnP Flux/Chroma/HunyuanVideo Inversion" for PnP Flux/Chroma/HunyuanVideo Inversion (RF-Solver),
# (FireFlow) and (KV-Edit).
FAMILIES = {name.split(" (")[0] for name in OURS if " (" in name} - set(OURS)


def named(text: str) -> list[str]:
    """The nodes a message names, ours by display name (longest first; or a family of them) and the
    host's; a stray "PnP <Name>" that is no node of ours fails the test."""
    found = []
    for name in sorted([*OURS, *CORE, *FAMILIES], key=len, reverse=True):
        if name in text:
            found.append(name)
            text = text.replace(name, "")
    assert not re.findall(r"\bPnP(?: [A-Z][\w.()-]*)+", text), text
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sd15 = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    unet_bank = unet_banks.capture(sd15, unet_inversion.invert(sd15, harness.latent(), empty, steps=3, evaluations=3))
    flux = fh.make_flux(seed=3, double=1, single=2)
    source, prompt = fh.latent(), fh.conditioning(seed=5)
    (rf,) = PnPFluxInversion.execute(flux, {"samples": source}, prompt, 3, 2, 1.0, "rf-solver-edit", "rf_solver",
                                     "simple", "single.0-1:v").result
    (fire,) = PnPFluxFireFlowInversion.execute(flux, {"samples": source}, prompt, 3, 1, 1.0, "replace_v", "simple",
                                               "single.0-1:v").result
    box = torch.zeros(1, 16, 16)
    box[:, 4:12, 4:12] = 1
    (kv,) = PnPFluxKVEditInversion.execute(flux, {"samples": source}, prompt, 3, 1, 1.5, "simple", box).result
    video = hunyuan_reference.make_hunyuan_video(double=1, single=40)  # the official layers are single 21-39
    return dict(sd15=sd15, empty=empty, unet_bank=unet_bank, flux=flux, source=source, prompt=prompt, rf=rf,
                fire=fire, kv=kv, box=box, target=fh.conditioning(seed=1), video=video)


def saved_in_input(node, bank, folders, prefix) -> str:
    """Save `bank` with `node` and copy the file into the input folder; its name there."""
    output, inputs = folders
    (shown,) = node.execute(bank, prefix).ui["text"]
    (inputs / (output / shown).name).write_bytes((output / shown).read_bytes())
    return (output / shown).name


def damaged(folders, name) -> str:
    _, inputs = folders
    harness.rewrite(inputs / name, lambda t: t.update(sigmas=t["sigmas"].flip(0)))
    return name


def other_sigmas(e):
    """A masked Flux edit injecting nothing, sampled by SamplerCustomAdvanced on 4 steps where the bank
    has 3: the region's check of the source path's schedule speaks."""
    (patched,) = PnPFluxApplyInjection.execute(e["flux"], e["rf"], 0, e["box"]).result
    sigmas = comfy.samplers.calculate_sigmas(e["flux"].get_model_object("model_sampling"), "simple", 4)
    return advanced(patched, e, sigmas)


def advanced(patched, e, sigmas=None):
    noise, bank_sigmas = PnPFluxNoise.execute(e["rf"]).result
    (conditioning,) = run_node(FluxGuidance, e["target"], 5.0)
    (guider,) = run_node(BasicGuider, patched, conditioning)
    (sampler,) = PnPRFSolverSampler.execute().result
    out, _ = run_node(SamplerCustomAdvanced, noise, guider, sampler, bank_sigmas if sigmas is None else sigmas,
                      {"samples": e["source"]})
    return out


def one_white_pixel():
    mask = torch.zeros(1, 128, 128)
    mask[0, 10, 10] = 1
    return mask


def cases(e, folders):
    """(what, the refused call, the nodes its message names, what it advises, run)."""
    rf_file = saved_in_input(PnPFluxSaveBank, e["rf"], folders, "rf")
    unet_file = saved_in_input(PnPSaveFeatureBank, e["unet_bank"], folders, "unet")
    bad_rf = damaged(folders, saved_in_input(PnPFluxSaveBank, e["rf"], folders, "bad_rf"))
    bad_unet = damaged(folders, saved_in_input(PnPSaveFeatureBank, e["unet_bank"], folders, "bad_unet"))
    flux, kv, rf, target = e["flux"], e["kv"], e["rf"], e["target"]

    def kv_sampler():
        return PnPFluxKVEditSampler.execute(flux, kv, target, 5.5, 1.0)
    long_flux = "single.1:v; " * 150 + "x"
    long_unet = "res:output.4; " * 140 + "x"
    return [
        ("a KV-Edit bank in PnP Flux/Chroma/HunyuanVideo Sampler (FireFlow)",
         lambda: PnPFluxFireFlowSampler.execute(flux, kv, target, 2.0, 1), KV_NODES, kv_sampler),
        ("a KV-Edit bank in PnP Flux/Chroma/HunyuanVideo Sampler",
         lambda: PnPFluxSampler.execute(flux, kv, target, 5.0, 1), KV_NODES, kv_sampler),
        ("a KV-Edit bank in PnP Flux/Chroma/HunyuanVideo Apply Feature Injection",
         lambda: PnPFluxApplyInjection.execute(flux, kv, 1), KV_NODES, kv_sampler),
        ("an RF-Solver bank in PnP Flux/Chroma/HunyuanVideo Sampler (FireFlow)",
         lambda: PnPFluxFireFlowSampler.execute(flux, rf, target, 2.0, 1), ["PnP Flux/Chroma/HunyuanVideo Sampler", "PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow)"],
         lambda: PnPFluxSampler.execute(flux, rf, target, 5.0, 1)),
        ("KV-Edit with a batch of 2 masks",
         lambda: PnPFluxKVEditInversion.execute(flux, {"samples": e["source"]}, e["prompt"], 3, 1, 1.5, "simple",
                                                e["box"].repeat(2, 1, 1)), [],
         lambda: PnPFluxKVEditInversion.execute(flux, {"samples": e["source"]}, e["prompt"], 3, 1, 1.5, "simple",
                                                e["box"])),
        ("PnP Flux/Chroma/HunyuanVideo Load Feature Bank, a missing name", lambda: PnPFluxLoadBank.execute("missing.pnpfluxbank.safetensors"),
         ["PnP Flux/Chroma/HunyuanVideo Save Feature Bank"], lambda: PnPFluxLoadBank.execute(rf_file)),
        ("PnP Load Feature Bank, a missing name", lambda: PnPLoadFeatureBank.execute("missing.pnpbank.safetensors"),
         ["PnP Save Feature Bank"], lambda: PnPLoadFeatureBank.execute(unet_file)),
        ("a Flux bank in PnP Load Feature Bank", lambda: PnPLoadFeatureBank.execute(rf_file),
         ["PnP Flux/Chroma/HunyuanVideo Load Feature Bank", "PnP Save Feature Bank"], lambda: PnPFluxLoadBank.execute(rf_file)),
        ("a U-Net bank in PnP Flux/Chroma/HunyuanVideo Load Feature Bank", lambda: PnPFluxLoadBank.execute(unet_file),
         ["PnP Load Feature Bank", "PnP Flux/Chroma/HunyuanVideo Save Feature Bank"], lambda: PnPLoadFeatureBank.execute(unet_file)),
        ("a damaged bank in PnP Flux/Chroma/HunyuanVideo Load Feature Bank", lambda: PnPFluxLoadBank.execute(bad_rf), ["PnP Flux/Chroma/HunyuanVideo Save Feature Bank"],
         lambda: PnPFluxLoadBank.execute(saved_in_input(PnPFluxSaveBank, rf, folders, "again"))),
        ("a damaged bank in PnP Load Feature Bank", lambda: PnPLoadFeatureBank.execute(bad_unet), ["PnP Save Feature Bank"],
         lambda: PnPLoadFeatureBank.execute(saved_in_input(PnPSaveFeatureBank, e["unet_bank"], folders, "again"))),
        ("stable-flow on HunyuanVideo",
         lambda: PnPFluxInversion.execute(e["video"], {"samples": hunyuan_reference.video_latent()},
                                          hunyuan_reference.conditioning_for(e["video"]), 1, 1, 1.0, "stable-flow",
                                          "rf_solver", "official"), [],
         lambda: PnPFluxInversion.execute(e["video"], {"samples": hunyuan_reference.video_latent()},
                                          hunyuan_reference.conditioning_for(e["video"]), 1, 1, 1.0, "rf-solver-edit",
                                          "rf_solver", "official")),
        ("a 1,800-character Flux layer text", lambda: flux_layers.parse_custom(long_flux), [],
         lambda: flux_layers.parse_custom("double.0,1,17,18:k,v; single.6,9,34,35,37:k,v@image")),
        ("a 1,900-character layer text of PnP Capture Features", lambda: unet_layers.parse_custom(long_unet), [],
         lambda: unet_layers.parse_custom("res:output.4; attn:output.4-11@0")),
        ("a mask whose white pixel vanishes, PnP Flux/Chroma/HunyuanVideo Sampler",
         lambda: PnPFluxSampler.execute(flux, rf, target, 5.0, 1, one_white_pixel()), ["GrowMask"],
         lambda: PnPFluxSampler.execute(flux, rf, target, 5.0, 1, GrowMask().expand_mask(one_white_pixel(), 8, True)[0])),
        ("a black mask, PnP Sampler",
         lambda: PnPSampler.execute(e["sd15"], e["unet_bank"], harness.conditioning(), e["empty"], 7.5, 0.8, 0.5, "ddim",
                                    mask=torch.zeros(1, 16, 16)), ["InvertMask"],
         lambda: PnPSampler.execute(e["sd15"], e["unet_bank"], harness.conditioning(), e["empty"], 7.5, 0.8, 0.5, "ddim",
                                    mask=InvertMask().invert(torch.zeros(1, 16, 16))[0])),
        ("a masked Flux edit on other sigmas", lambda: other_sigmas(e), ["PnP Flux/Chroma/HunyuanVideo Inversion", "PnP Flux/Chroma/HunyuanVideo Noise"],
         lambda: advanced(PnPFluxApplyInjection.execute(flux, rf, 0, e["box"]).result[0], e)),
    ]


def test_every_refusal_names_nodes_that_exist_and_accept_the_input(env, folders):
    """Each refusal of issue 27 (the wrong messages, and the bank-file and mask refusals): the message
    names the nodes listed and no other (each a node of the pack, its id in NODE_IDS, or of the host), quotes no more than a short excerpt of what the user typed, and what it advises
    runs with the same bank or input. Fails if a message sends the user to a node that also refuses
    (FireFlow's "sample it with PnP Flux/Chroma/HunyuanVideo Sampler" for a KV-Edit bank), offers what the method does not
    take ("or one mask per row" on KV-Edit), names the other wing's node (the U-Net's PnP Save Feature
    Bank or PnP Sigmas for Flux), or quotes a whole 2,000-character layer text."""
    ids = {node.define_schema().display_name: node.define_schema().node_id for node in NODES}
    for what, refused, nodes, advised in cases(env, folders):
        with pytest.raises(PnPError) as err:
            refused()
        text = str(err.value)
        found = named(text)
        assert sorted(found) == sorted(nodes), (what, text)
        assert all(name in CORE or name in FAMILIES or ids[name] in NODE_IDS for name in found), (what, found)
        assert len(text) < 700 and "x; single.1:v; single.1:v; single.1:v; single.1" not in text, (what, text)
        assert "one mask per row" not in text, (what, text)
        advised()  # raises if the advised node refuses too


# --- each wing's refusals name that wing's nodes (issue 26, item 7) ---------------------------------------------

def shown(node) -> str:
    return node.define_schema().display_name


def flux_inversion() -> str:
    """The name that stands for every flow-wing inversion node (RF-Solver, FireFlow, KV-Edit)."""
    return shown(PnPFluxInversion).split(" (")[0]


VELOCITY = [PnPFlowEdit, PnPUniEdit, PnPRFInversion]


def unet_masked_run(e, bank, sigmas=None):
    """A masked U-Net edit injecting nothing (so only the region's checks speak), by SamplerCustomAdvanced
    from the bank's start on `sigmas` (default: PnP Sigmas, the bank's)."""
    (patched,) = PnPApplyInjection.execute(e["sd15"], bank, 0.0, 0.0, e["box"]).result
    (bank_sigmas,) = PnPSigmas.execute(bank).result
    (guider,) = run_node(BasicGuider, patched, harness.conditioning())
    (sampler,) = run_node(KSamplerSelect, "euler")
    (noise,) = run_node(DisableNoise)
    start = {"samples": unet_inversion.to_user_latent(e["sd15"], bank.start)}
    out, _ = run_node(SamplerCustomAdvanced, noise, guider, sampler, bank_sigmas if sigmas is None else sigmas, start)
    return out


def flow_masked_run(e, bank, sigmas=None):
    (patched,) = PnPFluxApplyInjection.execute(e["flux"], bank, 0, e["box"]).result
    return advanced(patched, e, sigmas)


def departing(sigmas: torch.Tensor) -> torch.Tensor:
    """The bank's schedule with its second level moved: the first level agrees (so the injection's own check,
    one level for an injection of 0 steps, passes) and the region's check of the whole source path refuses."""
    moved = sigmas.clone()
    moved[1] = (moved[0] + moved[1]) / 2
    return moved


def masked_cases(e):
    """(what, refused, the nodes its message must name, advised) for the refusals of a masked run (region.py)
    on each wing: a sampler off the source path's schedule, and a bank without the source's path."""
    flux_bank, unet_bank = e["rf"], e["unet_bank"]
    return [
        ("a masked Flux edit on a schedule that departs after its first level",
         lambda: flow_masked_run(e, flux_bank, departing(flux_bank.sigmas)), [flux_inversion(), shown(PnPFluxNoise)],
         lambda: flow_masked_run(e, flux_bank)),
        ("a masked Flux edit with a bank that lacks the source's path",
         lambda: flow_masked_run(e, dataclasses.replace(flux_bank, path=None)), [flux_inversion()],
         lambda: flow_masked_run(e, flux_bank)),
        ("a masked U-Net edit on a schedule that departs after its first level",
         lambda: unet_masked_run(e, unet_bank, departing(unet_bank.sigmas)), [shown(PnPInversion), shown(PnPSigmas)],
         lambda: unet_masked_run(e, unet_bank)),
        ("a masked U-Net edit with a bank that lacks the source's path",
         lambda: unet_masked_run(e, dataclasses.replace(unet_bank, path=None)),
         [shown(PnPInversion), shown(PnPCaptureFeatures)], lambda: unet_masked_run(e, unet_bank)),
    ]


def test_a_masked_runs_refusals_name_the_nodes_of_the_wing_that_applied_it(env):
    """Region (pnp_injection/region.py) serves both wings; each refusal of a masked run names the nodes of
    the wing that applied it and no other: on the flow wing the flow inversion and PnP Flux/Chroma/HunyuanVideo Noise (its
    sigmas), on the U-Net wing PnP DDIM Inversion with PnP Sigmas or PnP Capture Features; and the advice
    runs. Fails with the text the region once had for every wing (the U-Net's "PnP DDIM Inversion ... PnP
    Sigmas" on a Flux run), or if a wing passes the other's fix."""
    for what, refused, nodes, advised in masked_cases(env):  # the 16x16 box fits both wings' test latents
        with pytest.raises(PnPError) as err:
            refused()
        text = str(err.value)
        assert sorted(named(text)) == sorted(nodes), (what, text)
        advised()


@pytest.fixture(scope="module")
def sd3():
    """A rectified-flow model of no flow-wing family (the velocity edits take it, the Flux nodes do not)."""
    model = rf_families.make("sd3")
    prompts = {name: rf_families.conditioning(model, seed=seed) for name, seed in (("source", 1), ("target", 5),
                                                                                  ("negative", 8))}
    return model, {"samples": rf_families.latent(model)}, prompts


def flowedit(model, latent, prompts):
    return PnPFlowEdit.execute(model, latent, prompts["source"], prompts["target"], 2, 2, 0, 1, -1, -1, 7,
                               negative=prompts["negative"])


def test_a_model_of_another_wing_is_sent_to_the_nodes_that_take_it(env, sd3):
    """A model the wing cannot edit is refused with the nodes that do take it, and they run: an SD 1.5 U-Net in
    the flow inversion is sent to PnP DDIM Inversion, a Flux.1 model in PnP DDIM Inversion to the flow nodes
    (and the velocity edits), and SD3 (rectified flow, no flow-wing family) in either to the velocity edits
    alone. Fails with the old texts: the U-Net wing sent every transformer to the Flux nodes (which refuse
    SD3), and the flow wing said "not yet ... SD3/SD3.5" of a model the velocity edits run on."""
    sd15, flux, prompt = env["sd15"], env["flux"], env["prompt"]
    model, latent, prompts = sd3
    velocity = [shown(node) for node in VELOCITY]

    def flux_invert(m, source, conditioning):
        return lambda: PnPFluxInversion.execute(m, source, conditioning, 3, 2, 1.0, "rf-solver-edit", "rf_solver",
                                                "simple", "single.0-1:v")  # the test Flux's 2 single blocks

    def ddim_invert(m, source, conditioning):
        return lambda: PnPInversion.execute(m, source, conditioning, 3, 3, "ddim_uniform")
    unet_source = {"samples": harness.latent()}
    cases = [
        ("SD 1.5 in the flow inversion", flux_invert(sd15, unet_source, env["empty"]),
         [flux_inversion(), shown(PnPInversion)], ddim_invert(sd15, unet_source, env["empty"])),
        ("SD3 in the flow inversion", flux_invert(model, latent, prompts["source"]), [flux_inversion(), *velocity],
         lambda: flowedit(model, latent, prompts)),
        ("Flux.1 in PnP DDIM Inversion", ddim_invert(flux, {"samples": env["source"]}, prompt),
         [flux_inversion(), shown(PnPFluxSampler), *velocity],
         flux_invert(flux, {"samples": env["source"]}, prompt)),
        ("SD3 in PnP DDIM Inversion", ddim_invert(model, latent, prompts["source"]), velocity,
         lambda: flowedit(model, latent, prompts)),
    ]
    for what, refused, nodes, advised in cases:
        with pytest.raises(PnPError) as err:
            refused()
        text = str(err.value)
        assert sorted(named(text)) == sorted(nodes), (what, text)
        advised()


def test_the_wings_agree_on_which_models_the_flow_nodes_take():
    """The U-Net wing names the flow nodes for a model by its host class (unet/families.FLOW_WING_MODELS: a wing
    imports no other), the flow wing decides by flow/families.family_of. On every rectified-flow family of the
    host, the U-Net's refusal names the flow inversion exactly where the flow wing takes the model, and the
    velocity edits everywhere; the flow wing's own refusal names the velocity edits. Fails if a family joins
    or leaves one wing's list and not the other's."""
    velocity = sorted(shown(node) for node in VELOCITY)
    taken = set()
    for family in rf_families.FAMILIES:
        model = rf_families.make(family)
        with pytest.raises(PnPError) as err:
            unet_families.family_of(model)
        found = named(str(err.value))
        try:
            flux_families.family_of(model)
            taken.add(family)
        except PnPError as refusal:
            assert sorted(named(str(refusal))) == sorted([flux_inversion(), *velocity]), (family, str(refusal))
        assert (flux_inversion() in found) == (family in taken), (family, str(err.value))
        assert sorted(set(found) - {flux_inversion(), shown(PnPFluxSampler)}) == velocity, (family, found)
    assert taken == {"flux", "chroma", "flux2", "hunyuan_video"}
