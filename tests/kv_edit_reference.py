"""An independent implementation of the official KV-Edit (Zhu et al. 2025, Xilluill/KV-Edit, at commit
77129a2 "fix start img bug") on diffusers' FluxTransformer2DModel, for the fidelity tests. Written from
the official algorithm, not from this pack's engine; the twin, the schedule and the packing are
flux_reference's.

The path is the Gradio demo's (gradio_kv_edit.py): `Flux_kv_edit.inverse` with skip_step 0 (line 91),
then `Flux_kv_edit.denoise` (models/kv_edit.py lines 160-202) with the demo's defaults (lines 296-321):
28 steps (line 298; both passes use denoise_num_steps, models/kv_edit.py lines 150 and 175), skip 4
(line 314), inversion guidance 1.5 (line 315), editing guidance 5.5 (line 316), attn_scale 1 (line 317),
re_init off (line 320) and attn_mask off (line 321).

Unlike an engine that runs every token, the editing pass here runs only the foreground (edited) tokens
through the network: their queries meet the text's keys and the inversion's stored image keys with the
foreground entries overwritten by their own (flux/modules/layers.py lines 304-315 and 368-378).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from flux_reference import SCALE, SHIFT, diffusers_twin, official_schedule, pack, unpack


def token_mask(mask, hw):
    """The mask as models/kv_edit.py lines 165-173 build it: resized to the latent (bilinear, line 165;
    the identity for a mask given at the latent's size), every positive value set to 1 (line 166),
    repeated over the 16 channels (line 168) and packed like the latent, "b c (h ph) (w pw) ->
    b (h w) (c ph pw)" (line 170): a [1, L, 64] mask, one entry per cell of each token. A token is
    foreground when its entries sum above 0.5 (line 172), i.e. any is set; returns the mask and the
    foreground token indices (line 173)."""
    h, w = hw
    m = mask.float()
    if tuple(m.shape[-2:]) != (2 * h, 2 * w):
        m = F.interpolate(m, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    m = torch.where(m > 0, torch.ones_like(m), m)
    m = m.expand(-1, 16, -1, -1)
    m = rearrange(m, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    fg = torch.nonzero(m.sum(dim=2)[0] > 0.5)[:, 0]
    return m, fg


class _State:
    """What the attention processors share: the mode ("store" in the inversion, "edit" in the editing,
    None for a plain call), the step's key, the bank, the foreground indices, the text length and the
    attention bias."""

    def __init__(self):
        self.mode, self.key, self.bank = None, None, {}
        self.fg, self.txt_len, self.bias = None, 0, None


class KVAttnProcessor:
    """Attention for a diffusers FluxAttention, double (image and text streams) or single block.

    store: keeps the image tokens' K (after the QK-norm, before RoPE; the norm is per token, so this is
    the official stored K, layers.py lines 283 and 350) and V under (key, block), layers.py lines 291-302
    and 358-366; attention is then the plain one.
    edit: the queries are the text's and the foreground tokens' only, rotated at their own positions
    (pe_q, flux/model.py lines 149-151; flux/math.py lines 12-16 and 35-40); the keys and values are the
    text's current ones followed by the stored image ones under (key, block) with the foreground
    entries overwritten by the current ones (layers.py lines 305-314 and 369-377), rotated at every
    position; the attention bias (models/kv_edit.py lines 48-62) is added for every query."""

    def __init__(self, state, name):
        self.state, self.name = state, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        s = self.state

        def heads(x):
            return x.unflatten(-1, (-1, attn.head_dim))

        q = attn.norm_q(heads(attn.to_q(hidden_states)))
        k = attn.norm_k(heads(attn.to_k(hidden_states)))
        v = heads(attn.to_v(hidden_states))
        double = encoder_hidden_states is not None
        if double:     # text first, as in the official cat((txt, img)) (layers.py lines 296-298)
            n_txt = encoder_hidden_states.shape[1]
            q = torch.cat((attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states))), q), dim=1)
            k = torch.cat((attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))), k), dim=1)
            v = torch.cat((heads(attn.add_v_proj(encoder_hidden_states)), v), dim=1)
        else:          # the single block's input is already cat(text, image) (layers.py lines 351-355)
            n_txt = s.txt_len
        cos, sin = image_rotary_emb
        q_rope, bias = (cos, sin), None
        if s.mode == "store":
            s.bank[(s.key, self.name, "k")] = k[:, n_txt:].clone()
            s.bank[(s.key, self.name, "v")] = v[:, n_txt:].clone()
        elif s.mode == "edit":
            img_k = s.bank[(s.key, self.name, "k")].clone()
            img_v = s.bank[(s.key, self.name, "v")].clone()
            img_k[:, s.fg] = k[:, n_txt:]
            img_v[:, s.fg] = v[:, n_txt:]
            k = torch.cat((k[:, :n_txt], img_k), dim=1)
            v = torch.cat((v[:, :n_txt], img_v), dim=1)
            rows = torch.cat((torch.arange(n_txt, device=s.fg.device), n_txt + s.fg))
            q_rope, bias = (cos[rows], sin[rows]), s.bias
        q = apply_rope(q, q_rope)
        k = apply_rope(k, (cos, sin))
        if bias is not None:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)
        if double:
            img = attn.to_out[1](attn.to_out[0](out[:, n_txt:]))
            return img, attn.to_add_out(out[:, :n_txt])
        return out


def apply_rope(x, cos_sin):
    """Flux's RoPE on [B, S, H, D] at the rows of `cos_sin` ([S, D] each; pairs of channels rotated)."""
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, cos_sin, sequence_dim=1)


def attention_bias(n_txt, tokens, fg, scale):
    """create_attention_scale (models/kv_edit.py lines 48-62): a [1, 1, text + L] additive bias, `scale`
    on the background image tokens' key columns, 0 on the text and the foreground; used in the
    editing pass when attn_scale != 0 and some token is background (lines 189-193), for every query
    of every double and single block (layers.py lines 315 and 378)."""
    bias = torch.zeros(1, 1, 1, n_txt + tokens)
    background = torch.ones(tokens, dtype=torch.bool)
    background[fg] = False
    bias[..., n_txt:][..., background] = scale
    return bias


class KVEdit:
    """The official KV-Edit inversion and editing on a diffusers Flux twin."""

    def __init__(self, net):
        self.net, self.state = net, _State()
        self.images = {}   # info['feature'][f"{t}_img"]: the latent before each inversion step
        self.calls = 0
        processors = {}
        for name in net.attn_processors:
            kind = "double" if name.startswith("transformer_blocks.") else "single"
            processors[name] = KVAttnProcessor(self.state, (kind, int(name.split(".")[1])))
        net.set_attn_processor(processors)

    def velocity(self, img, t, prompt, guidance, img_ids):
        txt, vec = prompt
        self.calls += 1
        self.state.txt_len = txt.shape[1]
        ones = torch.ones(img.shape[0])
        return self.net(hidden_states=img, encoder_hidden_states=txt, pooled_projections=vec, timestep=t * ones,
                        img_ids=img_ids, txt_ids=torch.zeros(txt.shape[1], 3), guidance=guidance * ones).sample

    @torch.no_grad()
    def invert(self, img, img_ids, prompt, timesteps, guidance):
        """denoise_kv with inverse=True (flux/sampling.py lines 152-178): the schedule walked upwards; at
        each step from t_curr up to t_prev, the latent before the step (lines 161-163) and every block's
        image K and V (layers.py lines 293-295, 360-362) are kept under t_prev (line 159), the model is
        called at t_curr (line 158), and img += (t_prev - t_curr) * v (line 178). Returns the final
        latent (sigma 1) and the last key, info['t'] after the loop (= timesteps[0])."""
        s = self.state
        ups = timesteps[::-1]
        for t_curr, t_prev in zip(ups[:-1], ups[1:]):
            self.images[t_prev] = img.clone()
            s.mode, s.key = "store", t_prev
            img = img + (t_prev - t_curr) * self.velocity(img, t_curr, prompt, guidance, img_ids)
        s.mode = None
        return img, ups[-1]

    @torch.no_grad()
    def denoise(self, img, img_ids, prompt, timesteps, guidance, mask, fg, key_shift=0):
        """denoise_kv with inverse=False (flux/sampling.py lines 155-178) on the foreground tokens `img`:
        at each step the key is t_curr (line 159); the stored latent under it gives the background cells
        of the foreground tokens, source * (1 - mask) + img * mask (lines 164-167); the model runs on the
        foreground tokens with the stored K/V (KVAttnProcessor "edit"); img += (t_prev - t_curr) * v
        (line 178). `key_shift` (a mutation) reads the key `key_shift` steps later in the editing
        order, the last stored key at most."""
        s = self.state
        m = mask[:, fg]
        for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
            key = timesteps[min(i + key_shift, len(timesteps) - 2)]
            img = self.images[key][:, fg] * (1 - m) + img * m
            s.mode, s.key = "edit", key
            img = img + (t_prev - t_curr) * self.velocity(img, t_curr, prompt, guidance, img_ids)
        s.mode = None
        return img


def kv_edit(model, source, mask, source_prompt, target_prompt, steps=28, skip=4, inversion_guidance=1.5,
            guidance=5.5, attn_scale=1.0, start="fixed", key_shift=0):
    """KV-Edit's edit of `source` (a user-space latent [1, 16, H, W]) inside `mask` ([1, 1, H, W], 0..1,
    at the latent's size), as the official demo runs it; returns the edited latent in user space.

    - Schedule: get_schedule(steps, L) (models/kv_edit.py lines 150 and 175), 28 steps in the demo
      (gradio_kv_edit.py line 298); the inversion walks all of it (skip 0, gradio_kv_edit.py line 91),
      the editing schedule[skip:] (models/kv_edit.py line 176), skip 4 (gradio_kv_edit.py line 314).
    - Inversion: the source prompt at guidance `inversion_guidance`, 1.5 (gradio_kv_edit.py line 315;
      models/kv_edit.py line 156).
    - Start (re_init off, models/kv_edit.py lines 179-187): the foreground tokens of the latent stored
      under info['t'], which after the inversion is its last upper end, schedule[0] = 1 (line 185;
      the fix of commit 77129a2): the latent before the inversion's last step, at level schedule[1].
      Mutation `start="top"`: the inversion's final latent (sigma 1), as before that fix (line 187 on zt).
    - Editing: the target prompt at guidance `guidance`, 5.5 (gradio_kv_edit.py line 316; models/
      kv_edit.py line 196), with the attention bias `attn_scale`, 1 (gradio_kv_edit.py line 317;
      models/kv_edit.py lines 189-193). attn_mask (an attention mask in the inversion) is off
      (gradio_kv_edit.py line 321) and not implemented.
    - Result: z0[fg] = z0[fg] * (1 - mask[fg]) + x * mask[fg] on the source tokens (models/kv_edit.py
      line 198), unpacked (line 200), in user space; the cells outside the mask equal `source` exactly.
    - Mutation `key_shift`: the editing reads the K/V and the background latent stored `key_shift`
      steps later (the official reads those under its step's t_curr).
    """
    if start not in ("fixed", "top"):
        raise ValueError(f"start must be 'fixed' or 'top', not {start!r}")
    reference = KVEdit(diffusers_twin(model))
    img, img_ids, hw = pack((source - SHIFT) * SCALE)
    tokens = img.shape[1]
    m, fg = token_mask(mask, hw)
    src = (source_prompt[0][0], source_prompt[0][1]["pooled_output"])
    tgt = (target_prompt[0][0], target_prompt[0][1]["pooled_output"])
    timesteps = official_schedule(steps, tokens)

    z0 = img.clone()
    zt, last_key = reference.invert(img, img_ids, src, timesteps, inversion_guidance)

    start_img = reference.images[last_key] if start == "fixed" else zt
    s = reference.state
    s.fg = fg
    s.bias = (attention_bias(tgt[0].shape[1], tokens, fg, attn_scale)
              if attn_scale != 0 and len(fg) < tokens else None)
    x = reference.denoise(start_img[:, fg], img_ids, tgt, timesteps[skip:], guidance, m, fg, key_shift)

    edited = z0.clone()
    edited[:, fg] = z0[:, fg] * (1 - m[:, fg]) + x * m[:, fg]
    # unpack(edited) / SCALE + SHIFT, written as the source plus the change so that the cells the edit
    # leaves alone come back bit-exact (the round trip (z - SHIFT) * SCALE / SCALE + SHIFT is not)
    return source + unpack(edited - z0, hw) / SCALE
