"""Where a flow bank's tables live (`bank` on PnP Flux/Chroma/HunyuanVideo Inversion, its FireFlow and KV-Edit nodes): memory, a file
in ComfyUI's temp folder, or recomputed while sampling from the inversion's own calls. For RF-Solver-Edit, FireFlow
and KV-Edit on Flux.1, for Chroma and Flux.2, and for HunyuanVideo (a source prompt shorter than the target, so
its text is padded to 256 as the official code does): every mode gives the same edited latent bit for bit,
injection moves it, a recomputed bank costs one model evaluation per injected slot and no more, and the node shows
the bank's size, place, kept steps and time. U-Net banks: test_bank_placement.py."""
from __future__ import annotations

import pytest
import torch

import family_reference as family_ref
import flux_harness as fh
import harness
import hunyuan_reference as hunyuan_ref
from comfyui_pnp.nodes.flux import (PnPFluxFireFlowInversion, PnPFluxFireFlowSampler, PnPFluxInversion,
                                    PnPFluxSampler)
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion, PnPFluxKVEditSampler
from comfyui_pnp.pnp_injection import PnPError, disk, notices, placement
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.flow.bank import slot_count

STEPS = 4
MODES = ("memory", "disk", "recompute")


def box_mask(size=16):
    mask = torch.zeros(1, size, size)
    mask[:, 3:13, 5:12] = 1
    return mask


def rf_solver_case(model, source, source_prompt, target, layers="rf-solver-edit", custom="", keep=3):
    def invert(mode):
        return PnPFluxInversion.execute(model, {"samples": source}, source_prompt, STEPS, keep, 1.0, layers,
                                        "rf_solver", "official", custom, mode).result[0]

    def edit(bank, inject=keep):
        return PnPFluxSampler.execute(model, bank, target, 5.0, inject).result[0]["samples"]
    return model, invert, edit, slot_count("rf_solver", STEPS, keep)


def fireflow_case():
    model = fh.make_flux(seed=3, double=2, single=4)

    def invert(mode):
        return PnPFluxFireFlowInversion.execute(model, {"samples": fh.latent()}, fh.conditioning(seed=5), STEPS, 2,
                                                1.0, "replace_v", "official", "single.0-3:v", mode).result[0]

    def edit(bank, inject=2):
        return PnPFluxFireFlowSampler.execute(model, bank, fh.conditioning(seed=1), 2.0, inject).result[0]["samples"]
    return model, invert, edit, slot_count("fireflow", STEPS, 2)


def kv_edit_case():
    model = fh.make_flux(seed=3, double=2, single=4)

    def invert(mode):
        return PnPFluxKVEditInversion.execute(model, {"samples": fh.latent()}, fh.conditioning(seed=5), STEPS, 1, 1.5,
                                              "official", box_mask(), mode).result[0]

    def edit(bank, inject=None):
        attn_scale = 1.0 if inject is None else 0.0  # KV-Edit always injects: its control is the attention scale
        return PnPFluxKVEditSampler.execute(model, bank, fh.conditioning(seed=1), 5.5, attn_scale).result[0]["samples"]
    return model, invert, edit, STEPS - 1


def family_case(maker):
    model = maker()
    return rf_solver_case(model, family_ref.latent_for(model), family_ref.conditioning_for(model, seed=5),
                          family_ref.conditioning_for(model, seed=1), flux_layers.ANALOGY)


def hunyuan_case():
    model = hunyuan_ref.make_hunyuan_video()
    return rf_solver_case(model, hunyuan_ref.video_latent(), hunyuan_ref.conditioning_for(model, seed=5, tokens=3),
                          hunyuan_ref.conditioning_for(model, seed=1, tokens=6))


CASES = {
    "flux-rf-solver": lambda: rf_solver_case(fh.make_flux(seed=3, double=2, single=4), fh.latent(),
                                             fh.conditioning(seed=5), fh.conditioning(seed=1), custom="single.2-3:v"),
    "flux-fireflow": fireflow_case,
    "flux-kv-edit": kv_edit_case,
    "chroma": lambda: family_case(family_ref.make_chroma),
    "flux2": lambda: family_case(family_ref.make_flux2),
    "hunyuan-video": hunyuan_case,
}


class Evaluations:
    """The network's evaluations, counted at its first double block (every family has one, and every evaluation,
    a recomputing one too, runs it once)."""

    def __init__(self, model):
        self.block, self.count = model.model.diffusion_model.double_blocks[0], 0

    def __enter__(self):
        self.handle = self.block.register_forward_pre_hook(lambda module, args: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("case", list(CASES))
def test_every_placement_gives_the_same_edit(case, caplog):
    model, invert, edit, injected_slots = CASES[case]()
    outs, evaluations = {}, {}
    for mode in MODES:
        bank = invert(mode)
        assert f"{'on disk' if mode == 'disk' else 'in memory' if mode == 'memory' else 'recomputed'}" in bank.info
        with Evaluations(model) as counted:
            outs[mode] = edit(bank)
        evaluations[mode] = counted.count
    assert torch.equal(outs["disk"], outs["memory"]), case
    assert torch.equal(outs["recompute"], outs["memory"]), case
    assert evaluations["disk"] == evaluations["memory"]
    assert evaluations["recompute"] == evaluations["memory"] + injected_slots, evaluations
    assert harness.rel(outs["memory"], edit(bank, 0)) > 0.01  # injection moves the edit


def test_a_flow_bank_that_fits_nowhere_is_refused_before_any_model_work(monkeypatch):
    """`memory` asked for with too little memory names the bank, the memory free, the disk free and recompute's
    figure; with neither memory nor disk for even the source's calls, `auto` refuses too; no model call is made."""
    model = fh.make_flux(seed=3, double=1, single=4)
    monkeypatch.setattr(placement, "available_bytes", lambda device: 1000)
    monkeypatch.setattr(disk, "free_bytes", lambda folder=None: 1000)
    for mode, message in (("memory", "does not fit in memory.*MiB.*Choose `bank` auto, disk or recompute"),
                          ("disk", "does not fit on the temp folder's disk"),
                          ("auto", "fits in no placement.*Free some memory or disk space")):
        with harness.CountCalls(model) as counted, pytest.raises(PnPError, match=message):
            PnPFluxInversion.execute(model, {"samples": fh.latent()}, fh.conditioning(seed=5), STEPS, 3, 1.0,
                                     "rf-solver-edit", "rf_solver", "official", "single.2-3:v", mode)
        assert counted.calls == 0


def test_the_flow_nodes_show_their_bank_and_a_disk_bank_saves(monkeypatch, tmp_path):
    """The inversion node's text (size, place, kept steps, time) is shown on the executing node; a disk bank saves
    (streamed from its file) and loads to the same edit; a recomputed bank refuses to be saved, naming the fix."""
    from comfy_execution.utils import CurrentNodeContext

    model, invert, edit, _ = CASES["flux-rf-solver"]()
    shown = []

    class Server:
        def send_progress_text(self, text, node_id, sid=None):
            shown.append((node_id, text))
    monkeypatch.setattr(notices, "_server", lambda: Server())
    with CurrentNodeContext("prompt", "7"):
        bank = invert("disk")
    assert shown == [("7", bank.info)]
    assert bank.info.startswith("PnP Flux/Chroma/HunyuanVideo Inversion: bank of ") and "3 of 4 steps of rf_solver" in bank.info
    path = flux_bank_file.save(bank, tmp_path / "b.pnpfluxbank.safetensors")
    assert torch.equal(edit(flux_bank_file.load(path)), edit(bank))
    with pytest.raises(PnPError, match="keeps no tables.*memory or disk"):
        flux_bank_file.save(invert("recompute"), tmp_path / "r.pnpfluxbank.safetensors")
