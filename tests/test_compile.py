"""ComfyUI's TorchCompileModel with PnP: on the model that PnP captures with, before PnP Apply
Feature Injection, and under PnP Sampler. The result must be the uncompiled one (within 1e-4
relative), injection must act, and injection must not recompile the U-Net step after step.

torch.compile does not guard on module forward hooks: a U-Net compiled without PnP's ResBlock
hooks runs its graphs without them, so injection and capture would be lost silently. PnP's
calls that record or inject therefore run outside the compiler; every other call (the steps
after the injected ones, plain sampling) runs compiled.

Backends: TorchCompileModel offers "inductor" (and "cudagraphs", CUDA only). Inductor's code
generation for ComfyUI's U-Net takes minutes on 2 CPU cores, so the default test compiles with
dynamo's "eager" backend (the same graph capture, guards and recompiles; graphs run by eager
PyTorch) and the inductor run is `slow`. Measured on 2026-11-27 (2 shared CPU cores, torch
2.14.1, this tiny SD 1.5-shaped U-Net, 7 steps, injection at steps 0-4): the injected steps
compile only PnP's few lines around the U-Net call (10-13 graphs, 12 operations; about 5 s with
"eager", 44 s with a cold inductor cache, most of it inductor's start-up); the first step
without injection compiles the U-Net once (52 graphs: 44 s "eager", 135 s inductor); later
steps and later runs compile nothing more than a 1-operation recompile of the U-Net's input
conv at the last step. A second run takes 0.4 s with inductor against 0.3 s uncompiled.

The test's U-Net has no transformers in the encoder and the middle block (harness.DECODER_ATTENTION_ONLY;
PnP reads and overwrites none there, and every layer it uses is kept): dynamo traces every module, and these
made most of the "eager" time above (14 graphs in all, about 10 s for the U-Net, 2026-11-27).
"""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import comfy.samplers
from host import run_node
import harness
from harness import compile_unavailable
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling

STEPS = 6
CFG = 7.5


@pytest.fixture(scope="module")
def setup():
    # Without the encoder's and the middle block's transformers, which PnP neither reads nor overwrites:
    # dynamo traces every module of the U-Net, and these are most of its cost.
    model = harness.make_model("sd15", **harness.DECODER_ATTENTION_ONLY)
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=STEPS, evaluations=STEPS)
    bank = banks.capture(model, trajectory)
    references = dict(pnp=run(patches.apply_injection(model, bank), bank, target, empty),
                      plain=run(model, bank, target, empty))
    yield model, empty, target, trajectory, bank, references
    torch._dynamo.reset()  # drop the compiled code: other tests run this U-Net class eagerly


def run(model, bank, target, empty, callback=None):
    start = sampling.start_latent(model, bank)["samples"]
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(target, empty)
    guider.set_cfg(CFG)
    with torch.no_grad():
        return guider.sample(torch.zeros_like(start), start, comfy.samplers.sampler_object("ddim"), bank.sigmas,
                             callback=callback, disable_pbar=True, seed=0)


def compiled() -> tuple[int, int]:
    """Graphs compiled and operations captured into them since the counters were cleared."""
    return counters["stats"]["unique_graphs"], counters["stats"]["calls_captured"]


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_model_with_pnp(setup, backend, steady_free_memory):
    """Fails if a compiled U-Net drops PnP's hooks (the capture stops with "did not reach
    layer"; the injected result is 8% off the uncompiled one, the ResBlock injection lost),
    if the U-Net is compiled at injected steps or recompiled step after step, or if a second
    run recompiles anything."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    why_not = compile_unavailable(backend)
    if why_not:
        pytest.skip(why_not)
    model, empty, target, trajectory, bank, references = setup
    torch._dynamo.reset()  # code compiled by another backend would count against the recompile limit
    (compiled_model,) = run_node(TorchCompileModel, model, backend)

    counters.clear()
    captured = banks.capture(compiled_model, trajectory)
    for key, table in bank.tables.items():
        assert harness.rel(captured.tables[key], table) < 1e-4, key

    by_step = []  # (graphs, operations) compiled so far, after each step
    out = run(patches.apply_injection(compiled_model, bank), bank, target, empty,
              callback=lambda step, *_: by_step.append(compiled()))
    print(backend, "compiled after the capture and each PnP step:", by_step)
    assert harness.rel(out, references["pnp"]) < 1e-4
    assert harness.rel(out, references["plain"]) > 0.10  # injection acts
    injected = max(bank.check_injection(model, 0.8, 0.5))
    glue_ops = by_step[injected - 1][1]  # capture and injected steps: PnP's own lines around the U-Net call
    unet_ops = by_step[injected][1] - glue_ops  # the first step without injection compiles the U-Net
    assert unet_ops > 10 * glue_ops, by_step
    later_ops = by_step[-1][1] - by_step[injected][1]  # later steps: no U-Net recompiles
    assert later_ops < unet_ops / 10, by_step

    before = compiled()
    again = sampling.pnp_sample(compiled_model, bank, target, empty, CFG)  # PnP Sampler on the compiled model
    assert harness.rel(again, references["pnp"]) < 1e-4
    assert compiled() == before  # nothing recompiled
    plain = run(compiled_model, bank, target, empty)
    assert harness.rel(plain, references["plain"]) < 1e-4
