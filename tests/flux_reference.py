"""Independent implementations of the official Flux edits on diffusers' FluxTransformer2DModel,
for the fidelity tests. Written from the official algorithms, not from this pack's engine:

- the diffusers twin of a ComfyUI Flux (the same weights, through ComfyUI's own key mapping
  comfy.utils.flux_to_diffusers);
- the official get_schedule;
- RF-Solver-Edit (wangjiangshan0725/RF-Solver-Edit, FLUX_Image_Edit/src/flux/sampling.py and
  modules/layers.py): the RF-Solver step, the values of single blocks 20-37 kept in a dict keyed
  like the official one (the inversion under the step's upper end, sampling under its current
  level, first and second evaluation apart), inversion at guidance 1, the target at guidance 5;
- FireFlow (HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing):
  src/flux/sampling.py `denoise_fireflow` (lines 185-248), the feature dict keyed by
  (t, second_order, block) of src/flux/modules/layers.py lines 239-278, and the driver of
  src/edit.py lines 161-188 (inversion at guidance 1, editing at the given guidance).
"""
from __future__ import annotations

import math

import comfy.utils
import torch
from einops import rearrange

SCALE, SHIFT = 0.3611, 0.1159     # the Flux autoencoder's latent scale and shift


def diffusers_twin(model):
    """A diffusers FluxTransformer2DModel holding `model`'s weights."""
    import diffusers

    config = model.model.model_config.unet_config
    net = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=config["depth"], num_single_layers=config["depth_single_blocks"],
        attention_head_dim=config["hidden_size"] // config["num_heads"], num_attention_heads=config["num_heads"],
        joint_attention_dim=config["context_in_dim"], pooled_projection_dim=config["vec_in_dim"],
        guidance_embeds=True, axes_dims_rope=tuple(config["axes_dim"]))
    comfy_sd = model.model.diffusion_model.state_dict()
    state = {}
    for key, source in comfy.utils.flux_to_diffusers(config, output_prefix="").items():
        if isinstance(source, str):
            if source in comfy_sd:
                state[key] = comfy_sd[source]
        elif source[1] is None:
            if source[0] in comfy_sd:
                state[key] = source[2](comfy_sd[source[0]])
        elif source[0] in comfy_sd:
            dim, start, length = source[1]
            state[key] = comfy_sd[source[0]].narrow(dim, start, length)
    net.load_state_dict(state, strict=True)
    return net.eval()


def official_schedule(steps, tokens, base_shift=0.5, max_shift=1.15):
    """get_schedule(steps, tokens): linspace(1, 0) shifted by mu linear in the token count."""
    mu = base_shift + (max_shift - base_shift) / (4096 - 256) * (tokens - 256)
    return [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if t > 0 else 0.0
            for t in torch.linspace(1, 0, steps + 1).tolist()]


def pack(z):
    """A latent [B, C, H, W] in model space as Flux tokens, with the image ids."""
    h, w = z.shape[-2] // 2, z.shape[-1] // 2
    img = rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return img, ids.reshape(-1, 3), (h, w)


def unpack(img, hw):
    h, w = hw
    return rearrange(img, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)


class RFSolverEdit:
    """The official RF-Solver-Edit inversion and edit."""

    def __init__(self, net, blocks=range(20, 38)):
        self.net, self.features, self.mode, self.key = net, {}, None, None
        for b in blocks:
            net.single_transformer_blocks[b].attn.to_v.register_forward_hook(self._hook(b))

    def _hook(self, block):
        def hook(module, args, out):
            if self.mode is None:
                return None
            name = (self.key, block)
            if self.mode == "store":
                self.features[name] = out.clone()
                return None
            return self.features[name]
        return hook

    def velocity(self, img, t, txt, vec, guidance, ids):
        ones = torch.ones(img.shape[0])
        return self.net(hidden_states=img, encoder_hidden_states=txt, pooled_projections=vec, timestep=t * ones,
                        img_ids=ids[0], txt_ids=ids[1], guidance=guidance * ones).sample

    @torch.no_grad()
    def denoise(self, img, timesteps, inverse, inject, guidance, txt, vec, ids):
        flags = [True] * inject + [False] * (len(timesteps) - 1 - inject)
        if inverse:
            timesteps, flags = timesteps[::-1], flags[::-1]
        for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
            on = "store" if inverse else "load"
            t_key = t_prev if inverse else t_curr
            self.mode, self.key = (on if flags[i] else None), (t_key, False)
            pred = self.velocity(img, t_curr, txt, vec, guidance, ids)
            mid = img + (t_prev - t_curr) / 2 * pred
            self.key = (t_key, True)
            pred_mid = self.velocity(mid, t_curr + (t_prev - t_curr) / 2, txt, vec, guidance, ids)
            img = img + (t_prev - t_curr) * pred + 0.5 * (t_prev - t_curr) ** 2 * (pred_mid - pred) / ((t_prev - t_curr) / 2)
        self.mode = None
        return img


def edit(reference, source, source_prompt, target_prompt, steps, inject, guidance):
    """An official driver (edit.py): invert `source` (user space) with the source prompt at guidance 1,
    then sample the target prompt at `guidance`; the edited latent in user space."""
    img, img_ids, hw = pack((source - SHIFT) * SCALE)
    src_txt, src_vec = source_prompt[0][0], source_prompt[0][1]["pooled_output"]
    tgt_txt, tgt_vec = target_prompt[0][0], target_prompt[0][1]["pooled_output"]
    timesteps = official_schedule(steps, img.shape[1])
    noise = reference.denoise(img, timesteps, True, inject, 1.0, src_txt, src_vec,
                              (img_ids, torch.zeros(src_txt.shape[1], 3)))
    out = reference.denoise(noise, timesteps, False, inject, guidance, tgt_txt, tgt_vec,
                            (img_ids, torch.zeros(tgt_txt.shape[1], 3)))
    return unpack(out, hw) / SCALE + SHIFT


def rf_solver_edit(model, source, source_prompt, target_prompt, inject, steps=25, guidance=5.0):
    """RF-Solver-Edit's edit of `source` (a user-space latent); 25 steps and guidance 5 by default
    (edit.py --num_steps, --guidance)."""
    return edit(RFSolverEdit(diffusers_twin(model)), source, source_prompt, target_prompt, steps, inject, guidance)


class FireFlow(RFSolverEdit):
    """The official FireFlow inversion and edit, with the two mutations the tests use to show
    they can fail: `reuse=False` (a fresh velocity at every step's start, the midpoint solver)
    and `key_shift` (the editing pass reads the features of the step `key_shift` later)."""

    def __init__(self, net, strategy: str = "replace_v", blocks=range(0, 38), reuse: bool = True, key_shift: int = 0):
        self.net, self.strategy, self.reuse, self.key_shift = net, strategy, reuse, key_shift
        self.features, self.mode, self.key = {}, None, None
        self.calls = 0
        for b in blocks:
            attn = net.single_transformer_blocks[b].attn
            # q and k as the official code holds them, after the QK-norm; v straight from its projection
            attn.norm_q.register_forward_hook(self._hook(b, "q"))
            attn.norm_k.register_forward_hook(self._hook(b, "k"))
            attn.to_v.register_forward_hook(self._hook(b, "v"))

    def _hook(self, block, tensor):
        def hook(module, args, out):
            if self.mode is None or not isinstance(self.key, tuple):
                return None
            name = (*self.key, block, tensor)
            if self.mode == "store":
                if tensor in self.strategy:  # layers.py lines 249-254: kept where the strategy names it
                    self.features[name] = out.clone()
                return None
            if name not in self.features:   # layers.py lines 257-278: only features that exist act
                return None
            if f"replace_{tensor}" in self.strategy:
                return self.features[name]
            if f"add_{tensor}" in self.strategy:
                return out + self.features[name]
            return None
        return hook

    def velocity(self, img, t, txt, vec, guidance, ids):
        self.calls += 1
        return super().velocity(img, t, txt, vec, guidance, ids)

    @torch.no_grad()
    def denoise(self, img, timesteps, inverse, inject, guidance, txt, vec, ids):
        flags = [True] * inject + [False] * (len(timesteps) - 1 - inject)
        if inverse:
            timesteps, flags = timesteps[::-1], flags[::-1]
        reused = None
        for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
            if inverse:
                t_key = t_prev
            else:
                t_key = timesteps[min(i + self.key_shift, len(timesteps) - 1)]
            mode = ("store" if inverse else "load") if flags[i] else None
            if reused is None:
                self.mode, self.key = mode, (t_key, False)
                pred = self.velocity(img, t_curr, txt, vec, guidance, ids)
            else:
                pred = reused
            mid = img + (t_prev - t_curr) / 2 * pred
            self.mode, self.key = mode, (t_key, True)
            pred_mid = self.velocity(mid, t_curr + (t_prev - t_curr) / 2, txt, vec, guidance, ids)
            reused = pred_mid if self.reuse else None
            img = img + (t_prev - t_curr) * pred_mid
        self.mode = None
        return img


def fireflow_edit(model, source, source_prompt, target_prompt, steps=8, inject=1, guidance=2.0,
                  strategy="replace_v", **mutation):
    """FireFlow's edit of `source` (a user-space latent) as src/edit.py runs it; returns the
    edited latent in user space and the model calls made."""
    reference = FireFlow(diffusers_twin(model), strategy, **mutation)
    out = edit(reference, source, source_prompt, target_prompt, steps, inject, guidance)
    return out, reference.calls
