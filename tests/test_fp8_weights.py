"""fp8 weights, as a user loads them (Load Diffusion Model, weight_dtype fp8_e4m3fn), act as float32 weights of
the same values: an RF-Solver-Edit and a FireFlow edit on the fp8 model match the same edits on the fp8-cast weights
held in float32 within 1e-3, and injection still moves the result. The model goes through the host's own UNETLoader
from a file; only the loader's detection is told the shrunk Flux's config (it fixes Flux.1's 24 heads of 128
channels, and a full-width model casts its fp8 weights far too slowly on a CPU for the default suite)."""
from __future__ import annotations

import comfy.model_detection
import comfy.supported_models
import comfy.utils
import folder_paths
import pytest
import torch
from nodes import UNETLoader

import flux_harness as fh
import harness
from comfyui_pnp.nodes.flux import PnPFluxFireFlowInversion, PnPFluxFireFlowSampler, PnPFluxInversion, PnPFluxSampler

STEPS, KEEP, SHAPE = 6, 5, dict(double=2, single=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusion_models")
    net = fh.make_flux(seed=3, **SHAPE).model.diffusion_model
    comfy.utils.save_torch_file({k: v.to(torch.bfloat16) for k, v in net.state_dict().items()},
                                str(folder / "flux-shrunk.safetensors"))
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(comfy.model_detection, "model_config_from_unet",
                      lambda *args, **kwargs: comfy.supported_models.Flux(fh.flux_config(**SHAPE)))
        (fp8,) = UNETLoader().load_unet("flux-shrunk.safetensors", "fp8_e4m3fn")
        (cast,) = UNETLoader().load_unet("flux-shrunk.safetensors", "default")
    stored = dict(fp8.model.diffusion_model.named_parameters())
    assert sum(p.dtype == torch.float8_e4m3fn for p in stored.values()) > len(stored) // 2, "few weights in fp8"
    with torch.no_grad():  # the same values, held in float32
        for name, weight in cast.model.diffusion_model.named_parameters():
            assert weight.dtype == torch.float32
            weight.copy_(weight.to(stored[name].dtype).to(weight.dtype))
    return fp8, cast


def rf_solver_edit(model, inject=KEEP):
    (bank,) = PnPFluxInversion.execute(model, {"samples": fh.latent()}, fh.conditioning(seed=5), STEPS, KEEP, 1.0,
                                       "rf-solver-edit", "rf_solver", "simple", "single.2-3:v").result
    return PnPFluxSampler.execute(model, bank, fh.conditioning(seed=1), 2.0, inject).result[0]["samples"]


def fireflow_edit(model, inject=1):
    (bank,) = PnPFluxFireFlowInversion.execute(model, {"samples": fh.latent()}, fh.conditioning(seed=5), STEPS, 1,
                                               1.0, "replace_v", "official", "single.0-3:v").result
    return PnPFluxFireFlowSampler.execute(model, bank, fh.conditioning(seed=1), 2.0, inject).result[0]["samples"]


@pytest.mark.parametrize("edit", [rf_solver_edit, fireflow_edit], ids=["rf-solver-edit", "fireflow"])
def test_fp8_weights_edit_as_their_float32_values(models, edit):
    fp8, cast = models
    out = edit(fp8)
    assert harness.rel(out, edit(cast)) < 1e-3
    assert harness.rel(out, edit(fp8, inject=0)) > 0.01  # injection moves the fp8 edit
