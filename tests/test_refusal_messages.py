"""A refusal never sends the user to a node that also refuses (issue 27): each message names nodes
that exist, and what it advises (a node, a preset, an input) accepts the same bank or input."""
import re

import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import BasicGuider, SamplerCustomAdvanced
from comfy_extras.nodes_flux import FluxGuidance
from comfy_extras.nodes_mask import GrowMask, InvertMask

import flux_harness as fh
import harness
import hunyuan_reference
from host import run_node
from comfyui_pnp.nodes import NODE_IDS, NODES
from comfyui_pnp.nodes.bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from comfyui_pnp.nodes.flux import (PnPFluxApplyInjection, PnPFluxFireFlowInversion, PnPFluxFireFlowSampler,
                                    PnPFluxInversion, PnPFluxLoadBank, PnPFluxNoise, PnPFluxSampler, PnPFluxSaveBank,
                                    PnPRFSolverSampler)
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion, PnPFluxKVEditSampler
from comfyui_pnp.nodes.injection import PnPSampler
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.unet import bank as unet_banks
from comfyui_pnp.pnp_injection.unet import inversion as unet_inversion
from comfyui_pnp.pnp_injection.unet import layers as unet_layers

OURS = {node.define_schema().display_name: node for node in NODES}
CORE = {"GrowMask": GrowMask, "InvertMask": InvertMask}  # the host's nodes the messages name
KV_NODES = ["PnP Flux Sampler (KV-Edit)", "PnP Flux Inversion (KV-Edit)"]  # a KV-Edit bank's refusal names them


# Names that stand for every node of theirs: "PnP Flux Inversion" for PnP Flux Inversion (RF-Solver),
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
        ("a KV-Edit bank in PnP Flux Sampler (FireFlow)",
         lambda: PnPFluxFireFlowSampler.execute(flux, kv, target, 2.0, 1), KV_NODES, kv_sampler),
        ("a KV-Edit bank in PnP Flux Sampler",
         lambda: PnPFluxSampler.execute(flux, kv, target, 5.0, 1), KV_NODES, kv_sampler),
        ("a KV-Edit bank in PnP Flux Apply Feature Injection",
         lambda: PnPFluxApplyInjection.execute(flux, kv, 1), KV_NODES, kv_sampler),
        ("an RF-Solver bank in PnP Flux Sampler (FireFlow)",
         lambda: PnPFluxFireFlowSampler.execute(flux, rf, target, 2.0, 1), ["PnP Flux Sampler", "PnP Flux Inversion (FireFlow)"],
         lambda: PnPFluxSampler.execute(flux, rf, target, 5.0, 1)),
        ("KV-Edit with a batch of 2 masks",
         lambda: PnPFluxKVEditInversion.execute(flux, {"samples": e["source"]}, e["prompt"], 3, 1, 1.5, "simple",
                                                e["box"].repeat(2, 1, 1)), [],
         lambda: PnPFluxKVEditInversion.execute(flux, {"samples": e["source"]}, e["prompt"], 3, 1, 1.5, "simple",
                                                e["box"])),
        ("PnP Flux Load Feature Bank, a missing name", lambda: PnPFluxLoadBank.execute("missing.pnpfluxbank.safetensors"),
         ["PnP Flux Save Feature Bank"], lambda: PnPFluxLoadBank.execute(rf_file)),
        ("PnP Load Feature Bank, a missing name", lambda: PnPLoadFeatureBank.execute("missing.pnpbank.safetensors"),
         ["PnP Save Feature Bank"], lambda: PnPLoadFeatureBank.execute(unet_file)),
        ("a Flux bank in PnP Load Feature Bank", lambda: PnPLoadFeatureBank.execute(rf_file),
         ["PnP Flux Load Feature Bank", "PnP Save Feature Bank"], lambda: PnPFluxLoadBank.execute(rf_file)),
        ("a U-Net bank in PnP Flux Load Feature Bank", lambda: PnPFluxLoadBank.execute(unet_file),
         ["PnP Load Feature Bank", "PnP Flux Save Feature Bank"], lambda: PnPLoadFeatureBank.execute(unet_file)),
        ("a damaged bank in PnP Flux Load Feature Bank", lambda: PnPFluxLoadBank.execute(bad_rf), ["PnP Flux Save Feature Bank"],
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
        ("a mask whose white pixel vanishes, PnP Flux Sampler",
         lambda: PnPFluxSampler.execute(flux, rf, target, 5.0, 1, one_white_pixel()), ["GrowMask"],
         lambda: PnPFluxSampler.execute(flux, rf, target, 5.0, 1, GrowMask().expand_mask(one_white_pixel(), 8, True)[0])),
        ("a black mask, PnP Sampler",
         lambda: PnPSampler.execute(e["sd15"], e["unet_bank"], harness.conditioning(), e["empty"], 7.5, 0.8, 0.5, "ddim",
                                    mask=torch.zeros(1, 16, 16)), ["InvertMask"],
         lambda: PnPSampler.execute(e["sd15"], e["unet_bank"], harness.conditioning(), e["empty"], 7.5, 0.8, 0.5, "ddim",
                                    mask=InvertMask().invert(torch.zeros(1, 16, 16))[0])),
        ("a masked Flux edit on other sigmas", lambda: other_sigmas(e), ["PnP Flux Inversion", "PnP Flux Noise"],
         lambda: advanced(PnPFluxApplyInjection.execute(flux, rf, 0, e["box"]).result[0], e)),
    ]


def test_every_refusal_names_nodes_that_exist_and_accept_the_input(env, folders):
    """Each refusal of issue 27 (the wrong messages, and the bank-file and mask refusals): the message
    names the nodes listed and no other (each a node of the pack, its id in NODE_IDS, or of the host), quotes no more than a short excerpt of what the user typed, and what it advises
    runs with the same bank or input. Fails if a message sends the user to a node that also refuses
    (FireFlow's "sample it with PnP Flux Sampler" for a KV-Edit bank), offers what the method does not
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
