"""Where a bank's tables live, chosen per run (placement.MODES): in memory, in a file on disk, or nowhere
(recomputed while sampling). Every mode gives the same edit; `auto` picks memory, then disk, then recompute by
the figures; a placement that cannot fit is refused before any model work with all three figures; a bank's file
goes when the bank goes; the node shows the bank's size, place, kept steps and time. U-Net banks here; Flux,
FireFlow, KV-Edit and the Flux descendants in test_flow_bank_placement.py."""
from __future__ import annotations

import gc

import pytest
import torch

import harness
from comfyui_pnp.nodes.capture import PnPCaptureFeatures
from comfyui_pnp.pnp_injection import PnPError, disk, notices, placement
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import bank_file, inversion, sampling


@pytest.fixture(scope="module")
def unet():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    return model, trajectory, empty, target


def test_every_placement_gives_the_same_edit(unet):
    """memory, disk and recompute: the same sampled latent bit for bit, and injection still moves it (more than 10%
    from the uninjected run). Fails if a mode loses, shifts or recomputes a tensor differently."""
    model, trajectory, empty, target = unet
    outs = {mode: sampling.pnp_sample(model, banks.capture(model, trajectory, bank=mode), target, empty)
            for mode in ("memory", "disk", "recompute")}
    assert torch.equal(outs["disk"], outs["memory"]) and torch.equal(outs["recompute"], outs["memory"])
    plain = sampling.pnp_sample(model, banks.capture(model, trajectory), target, empty, 7.5, 0.0, 0.0)
    assert harness.rel(outs["memory"], plain) > 0.10


def test_recompute_costs_one_source_pass_per_injected_step(unet):
    """A recomputed bank runs the source pass again once per injected step (the README's count): the U-Net
    evaluations of sampling grow by max(feature, attention) injected steps, no more."""
    model, trajectory, empty, target = unet

    def calls(bank):  # its time embedding runs once per U-Net evaluation, wrapped or not
        seen = []
        handle = model.model.diffusion_model.time_embed.register_forward_pre_hook(lambda m, a: seen.append(1))
        try:
            sampling.pnp_sample(model, bank, target, empty)
        finally:
            handle.remove()
        return len(seen)
    memory = banks.capture(model, trajectory, bank="memory")
    injected = max(memory.feature_step_count, memory.attention_step_count)
    assert calls(banks.capture(model, trajectory, bank="recompute")) == calls(memory) + injected


def test_auto_picks_memory_then_disk_then_recompute(unet, monkeypatch):
    """auto: memory while the bank takes at most half of the free memory, then disk while it fits on the temp
    folder's disk, then recompute; the bank's text names the choice and the reason."""
    model, trajectory, *_ = unet
    assert banks.capture(model, trajectory).info.count("in memory (auto")
    size = banks.estimate_bytes(model, banks.layer_sets.resolve(model, "auto", ""), trajectory.latents.shape[1:],
                                5, 3, None)
    monkeypatch.setattr(placement, "available_bytes", lambda device: int(size * 1.5))
    assert "on disk" in banks.capture(model, trajectory).info
    monkeypatch.setattr(disk, "free_bytes", lambda folder=None: size // 2)
    info = banks.capture(model, trajectory).info
    assert "recomputed while sampling" in info and "more than the" in info


def test_a_placement_that_cannot_fit_is_refused_before_any_model_work(unet, monkeypatch):
    """`memory` or `disk` asked for and too small: a PnPError giving the bank's size, the free memory, the free
    disk and what recompute keeps, and no U-Net call made."""
    model, trajectory, *_ = unet
    monkeypatch.setattr(placement, "available_bytes", lambda device: 1000)
    monkeypatch.setattr(disk, "free_bytes", lambda folder=None: 1000)
    for mode in ("memory", "disk"):
        with harness.CountCalls(model) as counted, pytest.raises(PnPError, match="GiB of memory is free.*recompute"):
            banks.capture(model, trajectory, bank=mode)
        assert counted.calls == 0


def test_a_disk_bank_saves_streamed_and_its_file_goes_with_it(unet, folders):
    """A disk bank saved with the bank-file writer (streamed from its file) loads and samples as the memory bank;
    its file in the temp folder is deleted when the bank is freed; a recomputed bank refuses to save, naming the
    fix."""
    model, trajectory, empty, target = unet
    on_disk = banks.capture(model, trajectory, bank="disk")
    file = next(iter(on_disk.residual.values())).file.path
    assert file.exists() and file.parent == disk.temp_folder()
    path = folders[0] / "bank.pnpbank.safetensors"
    bank_file.save(on_disk, path)
    memory = sampling.pnp_sample(model, banks.capture(model, trajectory, bank="memory"), target, empty)
    assert torch.equal(sampling.pnp_sample(model, bank_file.load(path), target, empty), memory)
    del on_disk
    gc.collect()
    assert not file.exists()
    with pytest.raises(PnPError, match="keeps no tables.*memory or disk"):
        bank_file.save(banks.capture(model, trajectory, bank="recompute"), folders[0] / "none.pnpbank.safetensors")


def test_the_capture_node_shows_its_bank(unet, monkeypatch):
    """PnP Capture Features' `bank` input, and the bank's text (size, place, kept steps, time) shown on the
    node as ComfyUI's progress text of the executing node."""
    from comfy_execution.utils import CurrentNodeContext

    model, trajectory, *_ = unet
    shown = []

    class Server:  # the part of ComfyUI's PromptServer the node uses
        def send_progress_text(self, text, node_id, sid=None):
            shown.append((node_id, text))
    monkeypatch.setattr(notices, "_server", Server)
    with CurrentNodeContext("prompt", "42"):
        bank = PnPCaptureFeatures.execute(model, trajectory, 0.8, 0.5, "auto", "", None, "model", "offload",
                                          "disk").result[0]
    assert shown == [("42", bank.info)]
    assert "on disk" in bank.info and "ResBlocks at 5 and attention at 3" in bank.info and " s" in bank.info
