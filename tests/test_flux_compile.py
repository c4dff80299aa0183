"""ComfyUI's TorchCompileModel on a Flux model, before PnP Flux/Chroma/HunyuanVideo Inversion and under PnP Flux/Chroma/HunyuanVideo
Sampler: the bank and the result must be the uncompiled ones (within 1e-4 relative),
injection must act, and a second run must compile nothing.

As on the U-Net (tests/test_compile.py), calls that record or inject run outside the
compiler, since torch.compile does not guard on the forward hooks that carry PnP's work;
the other calls (here the last step, past the injected ones) run compiled. Dynamo's "eager"
backend keeps this in the default suite: the same capture, guards and recompiles, without
inductor's minutes of code generation.
"""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from host import run_node
import flux_harness as fh
import harness
from harness import compile_unavailable

STEPS, INJECT = 3, 2
# A shallow Flux: 2 double-stream and 4 single-stream blocks (Flux.1 has 19 and 38), with the values of the
# later half of the single blocks kept, as rf-solver-edit keeps blocks 20-37 of Flux.1's. Dynamo traces each
# block it compiles, so the depth sets the cost; the hooks, guards and recompiles under test are per block
# kind and the same at any depth.
DOUBLE, SINGLE, LAYERS = 2, 4, "single.2-3:v"


def invert(model):
    return fh.invert(model, fh.latent(size=8), steps=STEPS, keep_steps=INJECT, custom=LAYERS)


def sample(model, bank, inject=INJECT):
    return fh.pnp(model, bank, fh.conditioning(seed=1), inject=inject)


def test_torch_compile_model_with_pnp_flux(steady_free_memory):
    """Fails if a compiled Flux drops PnP's hooks (the bank or the injected result off the
    uncompiled one), or if a second run recompiles anything."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    why_not = compile_unavailable("eager")
    if why_not:
        pytest.skip(why_not)
    model = fh.with_shift(fh.make_flux(seed=3, double=DOUBLE, single=SINGLE), 64, 64)
    bank = invert(model)
    reference, plain = sample(model, bank), sample(model, bank, inject=0)

    torch._dynamo.reset()
    try:
        (compiled_model,) = run_node(TorchCompileModel, model, "eager")
        counters.clear()
        compiled_bank = invert(compiled_model)
        assert harness.rel(compiled_bank.noise, bank.noise) < 1e-4
        for key, table in bank.tables.items():
            assert harness.rel(compiled_bank.tables[key], table) < 1e-4, key

        out = sample(compiled_model, bank)
        assert harness.rel(out, reference) < 1e-4
        print(f"injection effect under the compiler: {harness.rel(out, plain):.3f}")
        assert harness.rel(out, plain) > 0.05  # injection acts under the compiler
        graphs = counters["stats"]["unique_graphs"]
        assert graphs > 0, "the steps past the injected ones ran uncompiled"

        again = sample(compiled_model, bank)
        assert harness.rel(again, reference) < 1e-4
        assert counters["stats"]["unique_graphs"] == graphs  # nothing recompiled
    finally:
        torch._dynamo.reset()  # other tests run this Flux class eagerly
