"""Fidelity: our nodes against an independent diffusers implementation of the
algorithm in docs/pnp.md (sections 1-4).

The reference below is written from that algorithm in VP space, the way the official diffusers
code works (alphas_cumprod, DDIM updates, a batch of [source, uncond, cond] whose source
row feeds the injected layers of the other rows), on a diffusers UNet2DConditionModel that
holds the same random weights as the ComfyUI U-Net (mapped with ComfyUI's own
diffusers key mapping). Fails if any of inversion, layer choice, injected steps, row
mapping or guidance differs from docs/pnp.md.
"""
import comfy.utils
import pytest
import torch

import harness
from comfyui_pnp.nodes.capture import PnPCaptureFeatures
from comfyui_pnp.nodes.injection import PnPSampler
from comfyui_pnp.nodes.inversion import PnPInversion

diffusers = pytest.importorskip("diffusers")

SCALE = 0.18215  # SD 1.x latent scale (ComfyUI's process_latent_in)


def diffusers_twin(model):
    """A diffusers U-Net with the ComfyUI U-Net's weights."""
    config = model.model.model_config.unet_config
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=tuple(config["model_channels"] * m for m in config["channel_mult"]),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=config["context_dim"], attention_head_dim=config["num_heads"],
        use_linear_projection=False, norm_num_groups=32,
    )
    comfy_sd = model.model.diffusion_model.state_dict()
    mapping = comfy.utils.unet_to_diffusers(config)
    unet.load_state_dict({d: comfy_sd[c] for d, c in mapping.items() if c in comfy_sd}, strict=True)
    return unet.eval()


class Reference:
    """docs/pnp.md's algorithm, in VP space, on diffusers modules."""

    def __init__(self, unet):
        self.unet = unet
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.abar = torch.cumprod(1 - betas, 0).float()
        self.inject_f = self.inject_a = False
        res = [unet.up_blocks[1].resnets[1].conv2]
        attns = [unet.up_blocks[1].attentions[i] for i in (1, 2)]
        attns += [unet.up_blocks[b].attentions[i] for b in (2, 3) for i in range(3)]
        for m in res:
            m.register_forward_hook(lambda mod, a, out: self._rows(out) if self.inject_f else None)
        for a in attns:
            a1 = a.transformer_blocks[0].attn1
            for m in (a1.to_q, a1.to_k):
                m.register_forward_hook(lambda mod, a, out: self._rows(out) if self.inject_a else None)

    @staticmethod
    def _rows(out):  # every row takes the source row (row 0)
        return out[:1].expand_as(out).clone()

    def eps(self, x, t, context):
        return self.unet(x, t, encoder_hidden_states=context).sample

    @torch.no_grad()
    def invert(self, z, context, timesteps):
        """timesteps: ascending fine schedule starting after 0; returns latents keyed by t."""
        x, prev, out = z * SCALE, 0, {}
        for t in timesteps:
            e = self.eps(x, t, context)
            x0 = (x - (1 - self.abar[prev]) ** 0.5 * e) / self.abar[prev] ** 0.5
            x = self.abar[t] ** 0.5 * x0 + (1 - self.abar[t]) ** 0.5 * e
            out[t], prev = x, t
        return out

    @torch.no_grad()
    def sample(self, trajectory, timesteps, src_ctx, uncond, cond, cfg, n_f, n_a):
        x = trajectory[timesteps[0]]
        for i, t in enumerate(timesteps):
            self.inject_f, self.inject_a = i < n_f, i < n_a
            batch = torch.cat([trajectory[t], x, x])
            e = self.eps(batch, t, torch.cat([src_ctx, uncond, cond]))
            e_u, e_c = e[1:2], e[2:3]
            e = e_u + cfg * (e_c - e_u)
            x0 = (x - (1 - self.abar[t]) ** 0.5 * e) / self.abar[t] ** 0.5
            last = i == len(timesteps) - 1
            a_prev = torch.tensor(1.0) if last else self.abar[timesteps[i + 1]]  # sigma_N = 0
            x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * e
        self.inject_f = self.inject_a = False
        return x / SCALE


def ours(model, source, empty, steps, evaluations):
    """Inversion and capture through our nodes; returns a PnP Sampler run for given fractions."""
    trajectory, _ = PnPInversion.execute(model, {"samples": source}, empty, steps, evaluations, "ddim_uniform").result
    (bank,) = PnPCaptureFeatures.execute(model, trajectory, 0.8, 0.5, "auto").result

    def sample(positive, negative, f=0.8, a=0.5):
        (latent,) = PnPSampler.execute(model, bank, positive, negative, 7.5, f, a, "ddim").result
        return latent["samples"]
    return sample


# The 999-evaluation run (the paper's inversion, about 2000 U-Net calls) is `slow`. The default suite covers
# its parts: "fast" checks the inversion update, capture, injection and guidance against the reference, and
# test_schedule.py's test_faithful_inversion_visits_every_timestep_up_to_sigma_0 the 999-evaluation grid.
@pytest.mark.parametrize("steps, evaluations", [(50, 50), pytest.param(50, 999, marks=pytest.mark.slow)],
                         ids=["fast", "faithful-999"])
def test_nodes_match_an_independent_diffusers_implementation(steps, evaluations, record_property):
    model = harness.make_model("sd15", seed=3)
    reference = Reference(diffusers_twin(model))
    empty, negative, target = (harness.conditioning(seed=s) for s in (5, 6, 1))
    source = harness.latent()

    sample_ts = list(range(981, 0, -20))
    fine_ts = sorted(sample_ts) if evaluations == steps else list(range(1, 982))
    trajectory = reference.invert(source, empty[0][0], fine_ts)
    expected = reference.sample(trajectory, sample_ts, empty[0][0], negative[0][0], target[0][0], 7.5, 40, 25)

    sample = ours(model, source, empty, steps, evaluations)
    got = sample(target, negative)
    error = harness.rel(got, expected)
    record_property("relative_error", error)
    print(f"\n{steps} steps, {evaluations} inversion evaluations: relative error {error:.2e}")
    assert error < 1e-3

    unpatched = sample(target, negative, 0.0, 0.0)
    effect = harness.rel(got, unpatched)
    print(f"injection effect: {effect:.3f} relative")
    assert effect > 0.10
