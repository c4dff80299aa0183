"""Independent references for three velocity-level editing methods of rectified-flow models, written from
the official code (read, not copied; every rule cites its file and line), for the engine's fidelity tests.
Nothing here reads or imports this pack's engine (pnp_injection/, nodes/).

Conventions shared by every reference
-------------------------------------
* A velocity callable is ``velocity(x, t) -> v``: the transformer's raw output for one prompt side
  (source, target or inversion prompt; guidance-distilled guidance or classifier-free guidance folded
  in), in the noise - x0 convention, in the layout the official code feeds its transformer. ``t`` is a
  1-D tensor (one entry per sample) in [0, 1], 1 = noise, holding exactly the value the official code
  hands its transformer, divided by 1000 where that transformer takes 0..1000 timesteps (SD3, Wan). The
  dtype of ``t`` is the official one (see each function).
* All randomness comes in as tensors: ``noise`` is a sequence of tensors or a callable ``k -> k-th
  draw`` (FlowEdit); ``y1`` is a tensor (RF-Inversion). The official draw order is documented where used.
* Layouts: Flux latents are packed, [B, (H/2)(W/2), 4C] (2x2 patches, channel index c*4 + 2*ph + pw);
  SD3 latents are [B, C, H, W]; Wan latents are [B, C, T, H, W]. (UniEdit-Flow's SDXL path, the DDIM
  variants of its schedulers, is not covered.)
* Arithmetic follows the official expression order and dtype casts, so that with the same inputs, draws and
  velocities the references agree with the official code bit for bit (test_velocity_reference.py runs the
  official code from the git snapshots, where present, through stand-in pipelines and checks this in
  float32, float16 and bfloat16).

Sources (git snapshots under /work/.mirror)
------------------------------------------
* FlowEdit: fallenshock/FlowEdit @ 457f402, FlowEdit_utils.py (FlowEditSD3 lines 111-227, FlowEditFLUX
  lines 231-402), FLUX_exp.yaml, SD3_exp.yaml, run_script.py. The README (line 20-21) pins diffusers 0.30.
* UniEdit-Flow: DSL-Lab/UniEdit-Flow @ 69f7e81. FLUX: UniEdit-Flow_FLUX/src/edit.py and
  src/flux/sampling.py. diffusers: UniEdit-Flow_diffusers/schedulers/UniInvEulerScheduler.py,
  UniEditEulerScheduler.py, demo_edit.py, demo_wan_video_edit.py, utils.py.
* RF-Inversion: LituRout/RF-Inversion @ 7692b96 README.md (lines 66-84: num_inversion_steps 28, gamma 0.5,
  start_timestep 0, stop_timestep 7/28, num_inference_steps 28, eta 0.9) loads diffusers' community
  pipeline examples/community/pipeline_flux_rf_inversion.py (README line 46). Line numbers "rfinv:N" are
  those of the text read with the search tool's read_file (huggingface/diffusers @ 0036ae2a, 1055 lines).
  That text is a PR-branch commit whose lines 282-283 repeat "def _get_clip_prompt_embeds(" (it would not
  parse); the merged commit c9e4fab drops line 283, so its lines from 284 on are one lower; diffusers HEAD
  adds an opt-in eta decay (default off) and otherwise the same algorithm.
* diffusers FlowMatchEulerDiscreteScheduler: installed diffusers 0.42.1,
  schedulers/scheduling_flow_match_euler_discrete.py ("fmed:N"); v0.30.0 where FlowEdit's pinned version
  differs.

Quirks reproduced (the code cites the lines again)
--------------------------------------------------
FlowEdit
  F1. Steps run only where T_steps - i <= n_max (FlowEdit_utils.py:173, 324): the first n = T - n_max
      timesteps are skipped, so the edit starts at sigma index T - n_max.
  F2. FLUX takes t_i, t_im1 from scheduler.sigmas (lines 327-330) but hands the transformer
      timestep / 1000 (line 97); SD3 takes t_i = t / 1000, t_im1 = next t / 1000 or 0 (lines 176-180).
      The two differ from the sigmas by float32 rounding only. FLUX's `else: t_im1 = t_i` (line 331-332)
      is dead code (i < len(timesteps) always holds).
  F3. SD3 with n_min > 0 raises NameError at line 223 (noise_pred_tar undefined); the SD3 reference
      follows FlowEditFLUX's tail instead (lines 376-400: cast to the target velocity's dtype), keeping
      SD3's own t_i / t_im1 (lines 176-180) and the scheduler sigma at the switch (scale_noise, line 33).
  F4. SD3 without classifier-free guidance crashes (line 194 builds a tuple; calc_v_sd3 returns names it
      never set, lines 75-80), and a source scale <= 1 crashes too (line 131: the source prompts are then
      encoded without negatives, and line 165 concatenates None); flowedit_sd3_cfg raises for scales <= 1.
  F5. The SD3 tail evaluates all four CFG rows on xt_tar and discards the source ones (lines 215-217).
  F6. n_min > n_max (or n_min > T) leaves xt_tar unbound in the official code (UnboundLocalError); the
      references raise RuntimeError where it would.
  F7. calculate_shift's default max_shift is 1.16 (line 45), but it is always called with the scheduler
      config (1.15 for FLUX.1-dev, lines 265-271), so the default never acts.
  F8. diffusers 0.30 (FlowEdit's pinned version) shifts custom sigmas in float64 (v0.30.0 fmed:199-204);
      diffusers >= 0.32 casts them to float32 first (fmed:349). ``custom_sigmas_float32`` picks; the two
      differ by at most a few float32 ulps.
UniEdit-Flow, FLUX code
  U1. The step count is round(alpha * N) (sampling.py:411, Python's round: half to even), the diffusers
      schedulers use floor (UniInvEulerScheduler.py:89, UniEditEulerScheduler.py:77); e.g. alpha 0.6,
      N 8: 5 vs 4.
  U2. The mask is |v_trg - v_src| averaged over the channel dim, min-max normalised over the WHOLE tensor
      (all batch entries, sampling.py:495-496, "TODO ... batch_size=1"), with no epsilon: equal prompts
      give 0/0 = NaN everywhere and a NaN edit. See uniedit_flux_mask for the finite limit.
  U3. The model time is t_vec = torch.full(..., t, dtype=img.dtype) (sampling.py:419, 444, 464), so in
      bfloat16 the timestep is rounded to bfloat16.
  U4. The inversion is the empty prompt at guidance 1 (edit.py:153, 184); the edit uses the user guidance
      (edit.py:190, default 1, line 258) for both prompts, target evaluated before source (472-492).
UniEdit-Flow, diffusers schedulers
  D1. UniInv shifts the pipeline's float64 custom sigmas without a float32 cast (UniInvEulerScheduler.py
      lines 49-55), UniEdit casts first (UniEditEulerScheduler.py:50): with the Flux pipeline the two
      schedules can differ by a float32 ulp; on the SD3 / Wan path (linspace, lines 42-48 / 43-48) both
      shift in float64, and sigma_min there is the init schedule's already-shifted one, so it is shifted
      twice (as in diffusers itself).
  D2. UniInv evaluates the model at timesteps[k] on the predicted sample, integrates the corrected state
      from sigmas[k-1] to sigmas[k] with that velocity and predicts the next sample with it again
      (UniInvEulerScheduler.py:139-163); the sample the pipeline passes in is ignored after step 0.
      zero_initial drops the t = 0 evaluation and evaluates the clean latent at the first non-zero
      timestep instead (lines 81-85, 143-146).
  D3. The mask is the SIGNED channel mean of v_trg - v_src (dim 1 for 4-D/5-D, dim 2 for packed 3-D),
      min-max per sample with + 1e-7 (UniEditEulerScheduler.py:125-137): equal prompts give mask 0.
  D4. The edit batch is [source, target] on the same latent (utils.py:71-72); both halves receive the
      same update (lines 145-147) and stay equal; demo_edit takes images[0], the Wan demo [:1].
  D5. The Flux pipeline hands the transformer t.to(latents.dtype) / 1000 (pipeline_flux.py:898, 903);
      SD3 and Wan hand it t itself (pipeline_stable_diffusion_3.py:1069, pipeline_wan.py:613).
RF-Inversion (community pipeline)
  R1. invert evaluates the model at t_i = i / N with N = len(sigmas) = steps + 1 (rfinv:1024, 1029), a
      uniform grid that never reaches 1 (last 27/29), while its Euler steps are the shifted schedule's gaps
      sigmas[i] - sigmas[i + 1] taken from the top (rfinv:1051): model time and position disagree, so even
      gamma 0 is not an exact inversion of a time-dependent field. The conditional field uses the same
      uniform t_i: (y_1 - Y) / (1 - t_i) (rfinv:1046).
  R2. t_i is built in the latent dtype (rfinv:1029), and timestep repeats it batch_size = 1 times
      (rfinv:971, 1030) whatever the latent's batch.
  R3. __call__ uses t_i = 1 - t / 1000 from the float32 timesteps (rfinv:851), the denominator 1 - t_i is
      therefore t / 1000 up to float32 rounding, not scheduler.sigmas[i]; the transformer gets t.to(latents.dtype) / 1000 (rfinv:858, 862).
  R4. start/stop = int(fraction * steps) (truncation), stop clipped to steps (rfinv:831-832), computed
      from the count before get_timesteps trims for strength (rfinv:833); eta_t and dt are computed and
      unused (rfinv:852, 876); the controlled field uses eta on start <= i < stop (rfinv:877-882).
  R5. The inversion guidance tensor is not expanded to the batch (rfinv:1017); the inversion prompt is ""
      at guidance 0.0 (rfinv:932-933), the edit guidance 3.5 by default (rfinv:657).
  R6. Defaults of __call__ are eta 1.0 and stop_timestep 0.25 (rfinv:650, 653); the README example uses
      eta 0.9 and stop 7/28 (README.md:80-83), which the references default to.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np
import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Union[Sequence[torch.Tensor], Callable[[int], torch.Tensor]]

# Scheduler configs of the checkpoints the official code loads (Hugging Face scheduler_config.json):
# FLUX.1-dev (run_script.py:36, README.md:44) and SD3-medium (run_script.py:38, demo_edit.py:28).
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                          base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


# ----------------------------------------------------------------------------------------------------
# Flux latent packing
# ----------------------------------------------------------------------------------------------------

def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: 2x2 patches, token index h*(W/2)+w, channel index c*4+2*ph+pw.
    BFL sampling.py:18 ("b c (h ph) (w pw) -> b (h w) (c ph pw)"); diffusers _pack_latents rfinv:506-511
    (view B,C,H/2,2,W/2,2 / permute 0,2,4,1,3,5 / reshape)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux packing needs an even latent height and width, got {h}x{w}")
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, (H/2)(W/2), 4C] -> [B, C, H, W] for a LATENT height and width (the inverse of pack_latents).
    BFL sampling.py:508-516; diffusers _unpack_latents rfinv:514-525 (view B,H/2,W/2,C,2,2 / permute
    0,3,1,4,2,5), whose height/width arguments are in pixels."""
    b, n, c4 = x.shape
    if n != (height // 2) * (width // 2) or c4 % 4:
        raise ValueError(f"cannot unpack {tuple(x.shape)} to a {height}x{width} latent")
    return x.reshape(b, height // 2, width // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, height, width)


# ----------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------

def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    """mu on the line through (base_seq_len, base_shift) and (max_seq_len, max_shift), FlowEdit_utils.py:40-50
    and rfinv:92-103 (the same expression order: m, b, image_seq_len * m + b). The official default
    max_shift is 1.16 (FlowEdit_utils.py:45, rfinv:97) but every caller passes the scheduler config's 1.15
    (FlowEdit_utils.py:265-271, rfinv:815-821, 988-994)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def flux_get_schedule(num_steps: int, image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15,
                      shift: bool = True) -> list:
    """BFL get_schedule (UniEdit-Flow_FLUX/src/flux/sampling.py:59-75): torch.linspace(1, 0, N+1) in float32
    (line 67), shifted with mu on the line (256, 0.5)-(4096, max_shift) (get_lin_function, lines 51-56,
    72) by exp(mu) / (exp(mu) + (1/t - 1)) (time_shift, lines 47-48, 73); returned as a list of N+1 Python
    floats from 1.0 to 0.0 (line 75). shift=False for flux-schnell (edit.py:163)."""
    ts = torch.linspace(1, 0, num_steps + 1)
    if shift:
        m = (max_shift - base_shift) / (4096 - 256)   # get_lin_function(x1=256, y1, x2=4096, y2), lines 51-56
        b = base_shift - m * 256
        mu = m * image_seq_len + b
        ts = math.exp(mu) / (math.exp(mu) + (1 / ts - 1) ** 1.0)
    return ts.tolist()


def flow_match_init_sigma_range(shift: float = 1.0, use_dynamic_shifting: bool = False,
                                num_train_timesteps: int = 1000):
    """(sigma_max, sigma_min) of FlowMatchEulerDiscreteScheduler.__init__ (fmed:127-144): float32
    linspace(1, T, T) reversed, / T, shifted by shift*s/(1+(shift-1)*s) unless dynamic shifting, read back
    with .item(). With shift 3 the minimum is shift(0.001) ~ 0.002994."""
    ts = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    s = torch.from_numpy(ts).to(dtype=torch.float32) / num_train_timesteps
    if not use_dynamic_shifting:
        s = shift * s / (1 + (shift - 1) * s)
    return s[0].item(), s[-1].item()


def flow_match_shifted_sigmas(num_inference_steps=None, *, sigmas=None, mu=None, shift=1.0,
                              use_dynamic_shifting=False, num_train_timesteps=1000,
                              custom_sigmas_float32=True) -> np.ndarray:
    """The shifted sigmas (a numpy array, before the float32 tensor cast) of set_timesteps:
    * sigmas None: linspace(sigma_max * T, sigma_min * T, N) / T in float64 from the init range
      (fmed:340-348, _sigma_to_t fmed:238-239; UniInvEulerScheduler.py:42-48; UniEditEulerScheduler.py:43-48);
    * custom sigmas: cast to float32 first when custom_sigmas_float32 (diffusers >= 0.32, fmed:349;
      UniEditEulerScheduler.py:50), kept as given (float64 from the pipelines' np.linspace) otherwise
      (diffusers 0.30, UniInvEulerScheduler.py:49-50);
    then exp(mu)/(exp(mu) + (1/s - 1)^1) with dynamic shifting or shift*s/(1+(shift-1)*s) without
    (fmed:353-357; v0.30.0 fmed:199-202; UniInv lines 52-55; UniEdit lines 54-57)."""
    if sigmas is None:
        if num_inference_steps is None:
            raise ValueError("give num_inference_steps or sigmas")
        smax, smin = flow_match_init_sigma_range(shift, use_dynamic_shifting, num_train_timesteps)
        ts = np.linspace(smax * num_train_timesteps, smin * num_train_timesteps, num_inference_steps)
        s = ts / num_train_timesteps
    else:
        s = np.array(sigmas).astype(np.float32) if custom_sigmas_float32 else np.asarray(sigmas)
    if use_dynamic_shifting:
        if mu is None:
            raise ValueError("dynamic shifting needs mu (fmed:309-310)")
        s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    else:
        s = shift * s / (1 + (shift - 1) * s)
    return s


def flow_match_schedule(num_inference_steps=None, *, sigmas=None, mu=None, shift=1.0, use_dynamic_shifting=False,
                        num_train_timesteps=1000, custom_sigmas_float32=True):
    """FlowMatchEulerDiscreteScheduler.set_timesteps for the options the official code uses: returns
    (timesteps [N] float32 = sigmas * T, fmed:372-376; sigmas [N+1] float32 with the terminal 0 appended,
    fmed:386)."""
    s = flow_match_shifted_sigmas(num_inference_steps, sigmas=sigmas, mu=mu, shift=shift,
                                  use_dynamic_shifting=use_dynamic_shifting, num_train_timesteps=num_train_timesteps,
                                  custom_sigmas_float32=custom_sigmas_float32)
    s = torch.from_numpy(np.ascontiguousarray(s)).to(dtype=torch.float32)
    timesteps = s * num_train_timesteps
    return timesteps, torch.cat([s, torch.zeros(1)])


def flux_dev_schedule(num_steps: int, image_seq_len: int, custom_sigmas_float32: bool = True):
    """The FLUX.1-dev diffusers schedule as FlowEditFLUX (FlowEdit_utils.py:263-279) and the RF-Inversion
    pipeline (rfinv:813-829, 986-1002) build it: sigmas = np.linspace(1, 1/N, N), mu = calculate_shift
    (image_seq_len, 256, 4096, 0.5, 1.15) from the FLUX.1-dev scheduler config, set_timesteps(sigmas, mu)
    with dynamic shifting. Returns (timesteps [N], sigmas [N+1], mu)."""
    c = FLUX_DEV_SCHEDULER
    mu = calculate_shift(image_seq_len, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"], c["max_shift"])
    sig = np.linspace(1.0, 1 / num_steps, num_steps)
    timesteps, sigmas = flow_match_schedule(sigmas=sig, mu=mu, use_dynamic_shifting=True,
                                            custom_sigmas_float32=custom_sigmas_float32)
    return timesteps, sigmas, mu


def flowedit_flux_schedule(T_steps: int, image_seq_len: int, custom_sigmas_float32: bool = True):
    """FlowEditFLUX's (timesteps [T], sigmas [T+1]) (FlowEdit_utils.py:263-279). custom_sigmas_float32=False
    gives the pinned diffusers 0.30's float64 shift (quirk F8)."""
    timesteps, sigmas, _ = flux_dev_schedule(T_steps, image_seq_len, custom_sigmas_float32)
    return timesteps, sigmas


def flowedit_sd3_schedule(T_steps: int):
    """FlowEditSD3's (timesteps [T], sigmas [T+1]): retrieve_timesteps(scheduler, T_steps) (FlowEdit_utils.py:
    127) on the SD3 scheduler (shift 3.0, no dynamic shifting): the linspace path of set_timesteps."""
    return flow_match_schedule(T_steps, shift=SD3_SCHEDULER["shift"], use_dynamic_shifting=False)


def rf_inversion_schedule(num_steps: int, image_seq_len: int, strength: float = 1.0):
    """The RF-Inversion pipeline's (timesteps, sigmas) after retrieve_timesteps (rfinv:822-829 / 995-1002) and
    get_timesteps(num_steps, strength) (rfinv:611-621: t_start = int(max(N - min(N*strength, N), 0)),
    timesteps[t_start:], sigmas[t_start:] with the terminal 0; scheduler.order is 1)."""
    timesteps, sigmas, _ = flux_dev_schedule(num_steps, image_seq_len, custom_sigmas_float32=True)
    n = len(timesteps)
    init_timestep = min(n * strength, n)
    t_start = int(max(n - init_timestep, 0))
    return timesteps[t_start:], sigmas[t_start:]


def uniinv_schedule(num_inference_steps=None, *, sigmas=None, mu=None, shift=1.0, use_dynamic_shifting=False,
                    alpha=1.0, zero_initial=False, num_train_timesteps=1000):
    """UniInvEulerScheduler.set_timesteps (UniInvEulerScheduler.py:32-95): the shifted sigmas WITHOUT a
    float32 cast of custom sigmas (lines 49-55, quirk D1), float32 (line 66), timesteps = sigmas * T with a
    0 appended and flipped (lines 69-71), sigmas with a 0 appended and flipped (74-75): ascending from 0.
    zero_initial drops the leading 0 (lines 81-84). alpha < 1 keeps floor(alpha * N) steps by dropping
    N - floor(alpha * N) entries from the END (lines 88-92), N = num_inference_steps, or len(sigmas) when
    sigmas are given (line 50). Returns (timesteps, sigmas), equally long."""
    s = flow_match_shifted_sigmas(num_inference_steps, sigmas=sigmas, mu=mu, shift=shift,
                                  use_dynamic_shifting=use_dynamic_shifting, num_train_timesteps=num_train_timesteps,
                                  custom_sigmas_float32=False)
    n = num_inference_steps if sigmas is None else len(sigmas)
    s = torch.from_numpy(np.ascontiguousarray(s)).to(dtype=torch.float32)
    timesteps = torch.cat([s * num_train_timesteps, torch.zeros(1)]).flip(dims=[0])
    s = torch.cat([s, torch.zeros(1)]).flip(dims=[0])
    if zero_initial:
        timesteps, s = timesteps[1:], s[1:]
    if alpha < 1:
        skip = n - math.floor(alpha * n)
        timesteps, s = timesteps[:-skip], s[:-skip]
    return timesteps, s


def uniedit_schedule(num_inference_steps=None, *, sigmas=None, mu=None, shift=1.0, use_dynamic_shifting=False,
                     alpha=1.0, num_train_timesteps=1000):
    """UniEditEulerScheduler.set_timesteps (UniEditEulerScheduler.py:33-83): the shifted sigmas, custom ones
    cast to float32 first (line 50), timesteps = sigmas * T (lines 68-69), sigmas with 0 appended (71);
    alpha < 1 drops the FIRST N - floor(alpha * N) entries of both (lines 76-80). Returns (timesteps [M],
    sigmas [M+1]) with M = floor(alpha * N) (N when alpha >= 1)."""
    s = flow_match_shifted_sigmas(num_inference_steps, sigmas=sigmas, mu=mu, shift=shift,
                                  use_dynamic_shifting=use_dynamic_shifting, num_train_timesteps=num_train_timesteps,
                                  custom_sigmas_float32=True)
    n = num_inference_steps if sigmas is None else len(sigmas)
    s = torch.from_numpy(np.ascontiguousarray(s)).to(dtype=torch.float32)
    timesteps = s * num_train_timesteps
    s = torch.cat([s, torch.zeros(1)])
    if alpha < 1:
        skip = n - math.floor(alpha * n)
        timesteps, s = timesteps[skip:], s[skip:]
    return timesteps, s


def unieditflow_pipeline_schedules(pipeline: str, num_inference_steps: int = 15, alpha: float = 0.6,
                                   zero_initial: bool = False, image_seq_len: int | None = None,
                                   flow_shift: float = 3.0):
    """The inversion and edit schedules the diffusers demos get, as {"inversion": (timesteps, sigmas),
    "edit": (timesteps, sigmas)}:
    * "sd3": SD3 pipeline, scheduler from the SD3 config (demo_edit.py:48-49): set_timesteps(N)
      (pipeline_stable_diffusion_3.py:1035-1041 passes sigmas=None), shift 3.0;
    * "wan": UniInv/UniEdit(num_train_timesteps=1000, shift=flow_shift) (demo_wan_video_edit.py:45-46, shift
      default 3.0 line 22), set_timesteps(N) (pipeline_wan.py:554);
    * "flux": FLUX.1-dev config, sigmas = np.linspace(1, 1/N, N) and mu = calculate_shift(packed tokens)
      (pipeline_flux.py:823-843); needs image_seq_len.
    Hyper-parameters by set_hyperparameters(alpha=...) (demo_edit.py:53-54; demo_wan_video_edit.py:49-50)."""
    if pipeline in ("sd3", "wan"):
        kw = dict(shift=SD3_SCHEDULER["shift"] if pipeline == "sd3" else flow_shift)
        inv = uniinv_schedule(num_inference_steps, alpha=alpha, zero_initial=zero_initial, **kw)
        edit = uniedit_schedule(num_inference_steps, alpha=alpha, **kw)
    elif pipeline == "flux":
        if image_seq_len is None:
            raise ValueError("the flux pipeline's mu needs image_seq_len (the packed token count)")
        c = FLUX_DEV_SCHEDULER
        mu = calculate_shift(image_seq_len, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"], c["max_shift"])
        sig = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        inv = uniinv_schedule(sigmas=sig, mu=mu, use_dynamic_shifting=True, alpha=alpha, zero_initial=zero_initial)
        edit = uniedit_schedule(sigmas=sig, mu=mu, use_dynamic_shifting=True, alpha=alpha)
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}: sd3, flux or wan")
    return {"inversion": inv, "edit": edit}


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------

def cfg_velocity(cond: Velocity, uncond: Velocity, scale: float) -> Velocity:
    """Classifier-free guidance as the official code combines it: uncond + scale * (cond - uncond)
    (FlowEdit_utils.py:77-78; the SD3 and Wan pipelines the same way)."""
    def v(x, t):
        u = uncond(x, t)
        c = cond(x, t)
        return u + scale * (c - u)
    return v


def _noise_getter(noise: NoiseSource) -> Callable[[int], torch.Tensor]:
    if callable(noise):
        return noise
    seq = list(noise)

    def get(k):
        if k >= len(seq):
            raise IndexError(f"the official code draws noise #{k}, only {len(seq)} were given")
        return seq[k]
    return get


def _index_for_timestep(timesteps: torch.Tensor, t: torch.Tensor) -> int:
    """FlowMatchEulerDiscreteScheduler.index_for_timestep (fmed:393-422, the rule at 414-420): the first match, or the second
    when the timestep occurs more than once."""
    idx = (timesteps == t).nonzero()
    return idx[1 if len(idx) > 1 else 0].item()


# ----------------------------------------------------------------------------------------------------
# FlowEdit
# ----------------------------------------------------------------------------------------------------

def _flowedit(x_src, v_src, v_tar, noise, timesteps, sigmas, step_times, n_avg, n_min, n_max):
    """The FlowEdit loop shared by FlowEditFLUX (FlowEdit_utils.py:322-400) and FlowEditSD3 (171-227, with
    the FLUX tail). step_times(i, t) -> (t_i, t_im1) gives the model-independent times of step i.

    Noise draws, in order (torch.randn_like(x) in the official code, lines 188/342 and 211/380): for each
    run step i (T - i <= n_max) with T - i > n_min, n_avg draws (k = 0..n_avg-1); then one draw at the
    switch i == T - n_min. Draw number j*n_avg + k is step j's k-th average; the switch draw is number
    (number of averaging steps) * n_avg."""
    draw = _noise_getter(noise)
    T = len(timesteps)
    b = x_src.shape[0]
    zt_edit = x_src.clone()                                                  # line 169 / 320
    xt_tar = None
    k_draw = 0
    for i, t in enumerate(timesteps):
        if T - i > n_max:                                                    # lines 173-174 / 324-325
            continue
        t_i, t_im1 = step_times(i, t)
        t_model = t.expand(b) / 1000                                         # calc_v_flux line 86, 97
        if T - i > n_min:                                                    # line 182 / 334
            v_delta = torch.zeros_like(x_src)                                # line 185 / 337
            for _ in range(n_avg):                                           # line 186 / 339
                fwd_noise = draw(k_draw)                                     # line 188 / 342
                k_draw += 1
                zt_src = (1 - t_i) * x_src + t_i * fwd_noise                 # line 190 / 344
                zt_tar = zt_edit + zt_src - x_src                            # line 192 / 346
                vt_src = v_src(zt_src, t_model)                              # lines 349-356 (source first)
                vt_tar = v_tar(zt_tar, t_model)                              # lines 358-365
                v_delta += (1 / n_avg) * (vt_tar - vt_src)                   # line 198 / 367
            zt_edit = zt_edit.to(torch.float32)                              # line 201 / 370
            zt_edit = zt_edit + (t_im1 - t_i) * v_delta                      # line 203 / 372
            zt_edit = zt_edit.to(v_delta.dtype)                              # line 205 / 374
        else:                                                                # FLUX tail, lines 376-399
            if i == T - n_min:                                               # line 378
                fwd_noise = draw(k_draw)                                     # line 380
                k_draw += 1
                sigma = sigmas[_index_for_timestep(timesteps, t)]            # scale_noise, lines 31-33
                xt_src = sigma * fwd_noise + (1.0 - sigma) * x_src           # line 34
                xt_tar = zt_edit + xt_src - x_src                            # line 382
            if xt_tar is None:
                raise RuntimeError("n_min > n_max (or > T_steps): the official code's xt_tar is unbound here "
                                   "(UnboundLocalError)")
            vt_tar = v_tar(xt_tar, t_model)                                  # lines 384-391
            xt_tar = xt_tar.to(torch.float32)                                # line 394
            prev_sample = xt_tar + (t_im1 - t_i) * vt_tar                    # line 396
            xt_tar = prev_sample.to(vt_tar.dtype)                            # lines 398-399
    if n_min == 0:                                                           # line 400 / 227
        return zt_edit
    if xt_tar is None:
        raise RuntimeError("n_min > 0 but the tail never ran: the official code's xt_tar is unbound")
    return xt_tar


def flowedit_flux_packed(x_src_packed: torch.Tensor, v_src: Velocity, v_tar: Velocity, noise: NoiseSource, *,
                         T_steps: int = 28, n_avg: int = 1, n_min: int = 0, n_max: int = 24,
                         custom_sigmas_float32: bool = True) -> torch.Tensor:
    """FlowEditFLUX (FlowEdit_utils.py:231-400) on packed latents [B, L, 64]; returns the packed edit.
    Defaults: FLUX_exp.yaml lines 6-11 (T_steps 28, n_avg 1, n_min 0, n_max 24; src/tar guidance 1.5 /
    5.5 are the callables' business: distilled guidance embedding, lines 310-314). v_src / v_tar get
    packed latents and t = timesteps[i].expand(B) / 1000 in float32 (line 97); the Euler times are
    scheduler.sigmas[idx], sigmas[idx + 1] (lines 327-330, quirk F2). noise: draws shaped like the PACKED
    latent (randn_like(x_src_packed), lines 342, 380), in the order of _flowedit's docstring. mu uses the
    token count x_src_packed.shape[1] (line 264)."""
    timesteps, sigmas = flowedit_flux_schedule(T_steps, x_src_packed.shape[1], custom_sigmas_float32)
    timesteps, sigmas = timesteps.to(x_src_packed.device), sigmas.to(x_src_packed.device)

    def step_times(i, t):
        idx = _index_for_timestep(timesteps, t)                              # line 327
        return sigmas[idx], sigmas[idx + 1]                                  # lines 328-330
    return _flowedit(x_src_packed, v_src, v_tar, noise, timesteps, sigmas, step_times, n_avg, n_min, n_max)


def flowedit_flux(x_src: torch.Tensor, v_src: Velocity, v_tar: Velocity, noise: NoiseSource, *, T_steps: int = 28,
                  n_avg: int = 1, n_min: int = 0, n_max: int = 24, custom_sigmas_float32: bool = True) -> torch.Tensor:
    """FlowEditFLUX with the official signature's layout: x_src [B, 16, H, W] (unpacked latent), packed
    (line 259), edited, unpacked (line 401); returns [B, 16, H, W]. Velocities and noises are in the packed
    layout (see flowedit_flux_packed)."""
    h, w = x_src.shape[-2:]
    out = flowedit_flux_packed(pack_latents(x_src), v_src, v_tar, noise, T_steps=T_steps, n_avg=n_avg,
                               n_min=n_min, n_max=n_max, custom_sigmas_float32=custom_sigmas_float32)
    return unpack_latents(out, h, w)


def flowedit_sd3(x_src: torch.Tensor, v_src: Velocity, v_tar: Velocity, noise: NoiseSource, *, T_steps: int = 50,
                 n_avg: int = 1, n_min: int = 0, n_max: int = 33) -> torch.Tensor:
    """FlowEditSD3 (FlowEdit_utils.py:111-227) on [B, 16, H, W]; v_src / v_tar are the guided velocities
    (CFG 3.5 / 13.5 with negative prompt "", SD3_exp.yaml lines 8-9, run_script.py:74; see
    flowedit_sd3_cfg). Defaults: SD3_exp.yaml lines 6-11 (T_steps 50, n_avg 1, n_min 0, n_max 33; the
    function's own default n_max is 15, line 123). The model gets t = timesteps[i].expand(B) / 1000
    (the transformer itself gets timesteps[i], line 56, 65-72); the Euler times are t / 1000 and the next
    t / 1000 or 0 (lines 176-180). n_min > 0 follows FlowEditFLUX's tail (quirk F3). Noise draws are
    shaped like x_src (line 188), in the order of _flowedit's docstring."""
    timesteps, sigmas = flowedit_sd3_schedule(T_steps)
    timesteps, sigmas = timesteps.to(x_src.device), sigmas.to(x_src.device)

    def step_times(i, t):
        t_i = t / 1000                                                       # line 176
        if i + 1 < len(timesteps):                                           # line 177
            t_im1 = timesteps[i + 1] / 1000                                  # line 178
        else:
            t_im1 = torch.zeros_like(t_i).to(t_i.device)                     # line 180
        return t_i, t_im1
    return _flowedit(x_src, v_src, v_tar, noise, timesteps, sigmas, step_times, n_avg, n_min, n_max)


def flowedit_sd3_cfg(x_src: torch.Tensor, src_cond: Velocity, src_uncond: Velocity, tar_cond: Velocity,
                     tar_uncond: Velocity, noise: NoiseSource, *, src_guidance_scale: float = 3.5,
                     tar_guidance_scale: float = 13.5, **kw) -> torch.Tensor:
    """FlowEditSD3 from the four raw velocities (source/target prompt, source/target negative prompt, "" in
    run_script.py:74), combined as calc_v_sd3 does (FlowEdit_utils.py:76-78: uncond + scale * (text -
    uncond)). Scales <= 1 crash the official code (quirk F4) and raise here. The official batch is one call
    of four rows [src_uncond(zt_src), src_cond(zt_src), tar_uncond(zt_tar), tar_cond(zt_tar)] (lines 165,
    194); here the four callables are called in turn (uncond before cond, source before target). In the
    n_min tail only the target pair is called (the official code evaluates all four and drops two, F5)."""
    if src_guidance_scale <= 1 or tar_guidance_scale <= 1:
        raise ValueError("FlowEditSD3 crashes unless both guidance scales exceed 1 (FlowEdit_utils.py:75, 131, "
                         "149, 165, 194); pass guided callables to flowedit_sd3 instead")
    return flowedit_sd3(x_src, cfg_velocity(src_cond, src_uncond, src_guidance_scale),
                        cfg_velocity(tar_cond, tar_uncond, tar_guidance_scale), noise, **kw)


def flowedit_evaluations(T_steps: int, n_max: int, n_min: int = 0, n_avg: int = 1) -> dict:
    """Model evaluations of one FlowEdit edit: per averaging step 2 * n_avg velocity calls (source and
    target), per tail step 1 (target). "velocity_calls" counts calls of the references' callables (for SD3
    each is one CFG pair); the official SD3 code makes one transformer call of 4 rows per step, tail
    included (lines 194-196, 215-217): "sd3_transformer_calls" and "sd3_rows"."""
    run = [i for i in range(T_steps) if T_steps - i <= n_max]
    avg = [i for i in run if T_steps - i > n_min]
    tail = len(run) - len(avg)
    calls = 2 * n_avg * len(avg) + tail
    sd3_calls = n_avg * len(avg) + tail
    return {"steps": len(run), "averaging_steps": len(avg), "tail_steps": tail, "velocity_calls": calls,
            "noise_draws": n_avg * len(avg) + (1 if tail else 0),
            "sd3_transformer_calls": sd3_calls, "sd3_rows": 4 * sd3_calls}


# ----------------------------------------------------------------------------------------------------
# UniEdit-Flow, FLUX code (BFL sampling.py)
# ----------------------------------------------------------------------------------------------------

def uniedit_flux_mask(v_trg: torch.Tensor, v_src: torch.Tensor, official_nan: bool = True) -> torch.Tensor:
    """The FLUX code's fusion mask (sampling.py:494-496): m = |v_trg - v_src|.mean(dim=2, keepdim=True) on
    packed [B, L, 64], then (m - m.min()) / (m.max() - m.min()) over the whole tensor. official_nan=True
    reproduces the 0/0 of a constant m (equal prompts: all NaN). official_nan=False returns 0 where the
    denominator is 0: when v_trg == v_src everywhere, the fused velocity mask*v_trg + (1-mask)*v_src is
    v_src and the correction (mask+1)*omega*(v_trg - v_src) is 0 for ANY mask in [0, 1], so the step is
    the plain source step and that is the well-defined finite limit; 0 is one such mask. (A constant but
    non-zero |difference| has no such limit; 0 is then a convention.)"""
    cfg = v_trg - v_src
    m = cfg.abs().mean(dim=2, keepdim=True)
    if official_nan:
        return (m - m.min()) / (m.max() - m.min())
    den = m.max() - m.min()
    if den == 0:
        return torch.zeros_like(m)
    return (m - m.min()) / den


def uniedit_flux_invert(x: torch.Tensor, v_inv: Velocity, timesteps: Sequence[float], alpha: float = 0.6,
                        zero_init: bool = False) -> torch.Tensor:
    """edit_uniedit(inverse=True) (sampling.py:384-458) on packed [B, L, 64]: the schedule reversed (0 ->
    1, lines 404-406); the first K = round(alpha * N) steps run (lines 411, 415-417). Step i from t_curr to
    t_prev: pred = the previous step's pred_next (the model at t_curr on x for the first step, or 0 with
    zero_init, lines 425-440), x_next = x + (t_prev - t_curr) * pred (442), pred_next = v(x_next, t_prev)
    (444-455), x += (t_prev - t_curr) * pred_next (458). v_inv is the empty prompt at guidance 1 (edit.py:
    153, 184); t = torch.full((B,), t, dtype=x.dtype) (quirk U3). Evaluations: K + 1 (K with zero_init)."""
    ts = list(timesteps)[::-1]
    n = len(ts) - 1
    threshold = round(alpha * n)
    b = x.shape[0]
    img = x
    next_v = None
    for i, (t_curr, t_prev) in enumerate(zip(ts[:-1], ts[1:])):
        if i >= threshold:
            continue
        if next_v is None:
            pred = torch.zeros_like(img) if zero_init else v_inv(
                img, torch.full((b,), t_curr, dtype=img.dtype, device=img.device))
        else:
            pred = next_v
        img_next = img + (t_prev - t_curr) * pred
        pred_next = v_inv(img_next, torch.full((b,), t_prev, dtype=img.dtype, device=img.device))
        next_v = pred_next
        img = img + (t_prev - t_curr) * pred_next
    return img


def uniedit_flux_edit(z: torch.Tensor, v_src: Velocity, v_trg: Velocity, timesteps: Sequence[float],
                      alpha: float = 0.6, omega: float = 5.0, official_nan: bool = True) -> torch.Tensor:
    """edit_uniedit(inverse=False) (sampling.py:460-503) on packed [B, L, 64]: steps i >= N - round(alpha*N)
    of the descending schedule (lines 411, 461-462); per step pred_trg = v_trg(x, t) then pred_src =
    v_src(x, t) (472-492, both at the edit guidance), mask = uniedit_flux_mask (494-496), fused = mask *
    v_trg + (1 - mask) * v_src (499), pred = fused + (mask + 1) * omega * (v_trg - v_src) (501), x += (t_prev
    - t_curr) * pred (503). Evaluations 2 * round(alpha * N)."""
    ts = list(timesteps)
    n = len(ts) - 1
    threshold = round(alpha * n)
    b = z.shape[0]
    img = z
    for i, (t_curr, t_prev) in enumerate(zip(ts[:-1], ts[1:])):
        if i < n - threshold:
            continue
        t_vec = torch.full((b,), t_curr, dtype=img.dtype, device=img.device)
        pred_trg = v_trg(img, t_vec)
        pred_src = v_src(img, t_vec)
        cfg = pred_trg - pred_src
        mask = uniedit_flux_mask(pred_trg, pred_src, official_nan)
        fused = mask * pred_trg + (1 - mask) * pred_src
        pred = fused + (mask + 1) * omega * cfg
        img = img + (t_prev - t_curr) * pred
    return img


def uniedit_flux(x0_packed: torch.Tensor, v_inv: Velocity, v_src: Velocity, v_trg: Velocity, *, num_steps: int = 15,
                 alpha: float = 0.6, omega: float = 5.0, zero_init: bool = False, shift: bool = True,
                 official_nan: bool = True) -> torch.Tensor:
    """edit.py's 'uniedit' strategy (edit.py:152-190): inversion with the empty prompt at guidance 1, then
    the edit with [target, source] at the user guidance, both on get_schedule(num_steps, tokens) (lines 163,
    187). Defaults: edit.py argparse (num_steps 15 line 260, alpha 0.6 line 284, omega 5 line 285, zero_init
    off line 286, guidance 1 line 258 - inside the callables). Returns the packed edited latent."""
    timesteps = flux_get_schedule(num_steps, x0_packed.shape[1], shift=shift)
    z = uniedit_flux_invert(x0_packed, v_inv, timesteps, alpha, zero_init)
    return uniedit_flux_edit(z, v_src, v_trg, timesteps, alpha, omega, official_nan)


def uniedit_flux_evaluations(num_steps: int = 15, alpha: float = 0.6, zero_init: bool = False) -> dict:
    """Model evaluations of the FLUX code: K = min(round(alpha*N), N) steps each way; inversion K + 1 (K with
    zero_init), edit 2K (target and source)."""
    k = min(round(alpha * num_steps), num_steps)
    inv = (k + (0 if zero_init else 1)) if k else 0
    return {"steps": k, "inversion": inv, "edit": 2 * k, "total": inv + 2 * k}


# ----------------------------------------------------------------------------------------------------
# UniEdit-Flow, diffusers schedulers driven by the pipelines
# ----------------------------------------------------------------------------------------------------

def uniedit_diffusers_mask(guidance: torch.Tensor) -> torch.Tensor:
    """UniEditEulerScheduler.step's mask (UniEditEulerScheduler.py:121-137): the signed mean of guidance =
    v_trg - v_src over the channel dim (dim 1 for [B, C, H, W] and [B, C, T, H, W], dim 2 for packed
    [B, N, C]), min-max per sample with 1e-7 added to the range. Other ranks leave `mask` unset in the
    official code (UnboundLocalError) and raise ValueError here."""
    b = guidance.shape[0]
    if guidance.dim() in (4, 5):
        mask = guidance.mean(dim=1, keepdim=True)
    elif guidance.dim() == 3:
        mask = guidance.mean(dim=2, keepdim=True)
    else:
        raise ValueError(f"the UniEdit scheduler handles 3-, 4- and 5-D latents, got {guidance.dim()}-D")
    view = (b,) + (1,) * (guidance.dim() - 1)
    mask_min = mask.reshape(b, -1).min(dim=1).values.reshape(view)
    mask_max = mask.reshape(b, -1).max(dim=1).values.reshape(view)
    return (mask - mask_min) / (mask_max - mask_min + 1e-7)


def _pipeline_t(t: torch.Tensor, b: int, latent_dtype, cast_to_latent_dtype: bool) -> torch.Tensor:
    tt = t.expand(b)
    if cast_to_latent_dtype:       # FluxPipeline, pipeline_flux.py:898 then / 1000 at line 903 (quirk D5)
        tt = tt.to(latent_dtype)
    return tt / 1000


def uniinv_diffusers(x0: torch.Tensor, v_inv: Velocity, timesteps: torch.Tensor, sigmas: torch.Tensor,
                     zero_initial: bool = False, flux_pipeline_timestep: bool = False) -> torch.Tensor:
    """The pipeline loop (for t in timesteps: v = transformer(latents, t); latents = scheduler.step(v, t,
    latents), e.g. pipeline_wan.py:591-641) with UniInvEulerScheduler.step (UniInvEulerScheduler.py:98-171),
    on (timesteps, sigmas) from uniinv_schedule. State Z starts unset ('placeholder' with zero_initial,
    line 84). Step 0 without zero_initial: Z = x, out = x + v * (sigmas[1] - sigmas[0]) (126-138). Step k:
    Z += (sigmas[k] - sigmas[k-1]) * v (sigmas[k-1] read as 0 and Z set to the given sample on a
    zero_initial first step, lines 140-153), out = Z + (sigmas[k+1] - sigmas[k]) * v if k + 1 < len(sigmas)
    else Z (155-162); out is cast to v's dtype (138, 163), Z stays float32 (124, 135). v_inv: the ""
    prompt at guidance 1.0 (demo_edit.py:69-78), t = timesteps[k] / 1000 (see _pipeline_t). Returns the
    last out (the pipeline's output_type='latent' result). Evaluations len(timesteps)."""
    b = x0.shape[0]
    dev = x0.device
    sig = sigmas.to(dev)
    latents = x0
    state = "placeholder" if zero_initial else None
    first_sigma = 0
    for k, t in enumerate(timesteps.to(dev)):
        v = v_inv(latents, _pipeline_t(t, b, latents.dtype, flux_pipeline_timestep))
        sample = latents.to(torch.float32)
        if state is None:
            sigma, sigma_next = sig[k], sig[k + 1]
            state = sample
            prev = (sample + v * (sigma_next - sigma)).to(v.dtype)
        else:
            sigma, sigma_next = sig[k - 1], sig[k]
            if isinstance(state, str):
                sigma = first_sigma
                state = sample
            dt = sigma_next - sigma
            state = state + dt * v
            if k + 1 < len(sig):
                prev = state + (sig[k + 1] - sigma_next) * v
            else:
                prev = state
            prev = prev.to(v.dtype)
        latents = prev
    return latents


def uniedit_diffusers(z: torch.Tensor, v_src: Velocity, v_trg: Velocity, timesteps: torch.Tensor,
                      sigmas: torch.Tensor, omega: float = 5.0, flux_pipeline_timestep: bool = False) -> torch.Tensor:
    """The pipeline loop with UniEditEulerScheduler.step (UniEditEulerScheduler.py:85-158) on (timesteps,
    sigmas) from uniedit_schedule. The latents are the edit batch cat([z, z]) (utils.py:71-72, quirk D4);
    per step the model output is cat([v_src(first half), v_trg(second half)]) (prompts [src, trg], guidance
    scale 1.0: no CFG, demo_edit.py:85-92), guidance = v_trg - v_src (120-121), mask =
    uniedit_diffusers_mask (125-137), corr = omega * (sigmas[k+1] - sigmas[k]) * (1 + mask) * guidance (140),
    fused = mask * v_trg + (1 - mask) * v_src (143), both duplicated over the halves (145-146), out =
    float32 sample + corr + (sigmas[k+1] - sigmas[k]) * fused (147) cast to the model output dtype (150).
    Returns the whole [2B, ...] batch (both halves equal). Evaluations 2 * len(timesteps)."""
    b = z.shape[0]
    dev = z.device
    sig = sigmas.to(dev)
    latents = torch.cat([z, z], dim=0)
    for k, t in enumerate(timesteps.to(dev)):
        tt = _pipeline_t(t, b, latents.dtype, flux_pipeline_timestep)
        model_output = torch.cat([v_src(latents[:b], tt), v_trg(latents[b:], tt)], dim=0)
        sample = latents.to(torch.float32)
        sigma, sigma_next = sig[k], sig[k + 1]
        vs, vt = model_output.chunk(2, dim=0)
        guidance = vt - vs
        mask = uniedit_diffusers_mask(guidance)
        stride_corr = omega * (sigma_next - sigma) * (1 + mask) * guidance
        fusion = mask * vt + (1 - mask) * vs
        stride_corr = torch.cat([stride_corr, stride_corr], dim=0)
        fusion = torch.cat([fusion, fusion], dim=0)
        prev = sample + stride_corr + (sigma_next - sigma) * fusion
        latents = prev.to(model_output.dtype)
    return latents


def unieditflow_diffusers(x0: torch.Tensor, v_inv: Velocity, v_src: Velocity, v_trg: Velocity, *,
                          pipeline: str = "sd3", num_inference_steps: int = 15, alpha: float = 0.6,
                          omega: float = 5.0, zero_initial: bool = False, flow_shift: float = 3.0) -> torch.Tensor:
    """demo_edit.py / demo_wan_video_edit.py end to end: UniInv with the "" prompt, then UniEdit with
    [src, trg]; defaults step 15, alpha 0.6, omega 5.0 (demo_edit.py:23-26; demo_wan_video_edit.py:22-27,
    flow_shift 3.0). x0 layout: [B, C, H, W] for "sd3" (SDXL uses the DDIM variants, not covered), packed
    [B, N, 64] for "flux", [B, C, T, H, W] for "wan". Returns the [2B, ...] edit batch (take [:B])."""
    seq = x0.shape[1] if pipeline == "flux" else None
    sch = unieditflow_pipeline_schedules(pipeline, num_inference_steps, alpha, zero_initial, seq, flow_shift)
    fl = pipeline == "flux"
    z = uniinv_diffusers(x0, v_inv, *sch["inversion"], zero_initial=zero_initial, flux_pipeline_timestep=fl)
    return uniedit_diffusers(z, v_src, v_trg, *sch["edit"], omega=omega, flux_pipeline_timestep=fl)


def uniedit_diffusers_evaluations(num_inference_steps: int = 15, alpha: float = 0.6, zero_initial: bool = False) -> dict:
    """Model evaluations of the diffusers path: K = floor(alpha*N) (N when alpha >= 1); inversion K + 1
    transformer calls of one row (K with zero_initial), edit K calls of two rows."""
    k = math.floor(alpha * num_inference_steps) if alpha < 1 else num_inference_steps
    inv = k if zero_initial else k + 1
    return {"steps": k, "inversion": inv, "edit_calls": k, "edit_rows": 2 * k, "total_rows": inv + 2 * k}


# ----------------------------------------------------------------------------------------------------
# RF-Inversion (diffusers community pipeline)
# ----------------------------------------------------------------------------------------------------

def rf_inversion_invert(y0: torch.Tensor, v_inv: Velocity, y1: torch.Tensor, *, num_inversion_steps: int = 28,
                        gamma: float = 0.5, strength: float = 1.0, image_seq_len: int | None = None) -> torch.Tensor:
    """RFInversionFluxPipeline.invert, Algorithm 1 (rfinv:929-1055) on packed y0 [B, L, 64] (the encoded
    image, rfinv:980-983). sigmas from rf_inversion_schedule (rfinv:986-1003), N = len(sigmas) = steps + 1
    (1024); for i in range(N - 1) (1028): t_i = tensor(i / N, dtype=y0.dtype) (1029), u = v_inv(Y, t_i
    repeated once, 1030-1043), u_cond = (y1 - Y) / (1 - t_i) (1046), u_hat = u + gamma * (u_cond - u)
    (1050), Y = Y + u_hat * (sigmas[i] - sigmas[i + 1]) (1051). y1 is the one noise draw, randn_like of the
    PACKED y0 (1023). v_inv is the "" prompt at guidance 0.0 (932-933, 1017). image_seq_len defaults to
    the token count (the official (H//16)*(W//16), 987). Quirks R1, R2."""
    seq = y0.shape[1] if image_seq_len is None else image_seq_len
    _, sigmas = rf_inversion_schedule(num_inversion_steps, seq, strength)
    sigmas = sigmas.to(y0.device)
    batch_size = 1                                                           # rfinv:971
    Y = y0
    N = len(sigmas)
    for i in range(N - 1):
        t_i = torch.tensor(i / N, dtype=Y.dtype, device=Y.device)
        timestep = t_i.clone().repeat(batch_size)
        u = v_inv(Y, timestep)
        u_cond = (y1 - Y) / (1 - t_i)
        u_hat = u + gamma * (u_cond - u)
        Y = Y + u_hat * (sigmas[i] - sigmas[i + 1])
    return Y


def rf_inversion_edit(inverted: torch.Tensor, y0: torch.Tensor, v_edit: Velocity, *, num_inference_steps: int = 28,
                      eta: float = 0.9, start_timestep: float = 0.0, stop_timestep: float = 7 / 28,
                      strength: float = 1.0, image_seq_len: int | None = None) -> torch.Tensor:
    """RFInversionFluxPipeline.__call__ with inverted_latents, Algorithm 2 (rfinv:641-926) on packed
    latents. start/stop = int(fraction * n), stop <= n (831-832; fractions checked by check_inputs, 488);
    (timesteps, sigmas) = rf_inversion_schedule (813-833); for i, t: t_i = 1 - t / 1000 (851), noise_pred =
    v_edit(x, t.expand(B).to(x.dtype) / 1000) (858-870), v_t = -noise_pred (874), v_cond = (y0 - x) / (1 -
    t_i) (875), v_hat = v_t + eta * (v_cond - v_t) if start <= i < stop else v_t (877-882), x = x + v_hat *
    (sigmas[i] - sigmas[i + 1]) (885). v_edit: target prompt at guidance 3.5 (657, 838-840). Defaults: the
    README example (README.md:75-84). Quirks R3-R6."""
    if start_timestep < 0 or start_timestep > stop_timestep:                  # rfinv:488-489
        raise ValueError(f"`start_timestep` should be in [0, stop_timestep] but is {start_timestep}")
    seq = inverted.shape[1] if image_seq_len is None else image_seq_len
    n = num_inference_steps                 # retrieve_timesteps returns len(timesteps) == N for these sigmas
    start = int(start_timestep * n)
    stop = min(int(stop_timestep * n), n)
    timesteps, sigmas = rf_inversion_schedule(num_inference_steps, seq, strength)
    timesteps, sigmas = timesteps.to(inverted.device), sigmas.to(inverted.device)
    y_0 = y0.clone()
    latents = inverted
    b = latents.shape[0]
    for i, t in enumerate(timesteps):
        t_i = 1 - t / 1000
        timestep = t.expand(b).to(latents.dtype)
        noise_pred = v_edit(latents, timestep / 1000)
        v_t = -noise_pred
        v_t_cond = (y_0 - latents) / (1 - t_i)
        if start <= i < stop:
            v_hat_t = v_t + eta * (v_t_cond - v_t)
        else:
            v_hat_t = v_t
        latents = latents + v_hat_t * (sigmas[i] - sigmas[i + 1])
    return latents


def rf_inversion(y0: torch.Tensor, v_inv: Velocity, v_edit: Velocity, y1: torch.Tensor, *,
                 num_inversion_steps: int = 28, gamma: float = 0.5, num_inference_steps: int = 28,
                 eta: float = 0.9, start_timestep: float = 0.0, stop_timestep: float = 7 / 28,
                 strength: float = 1.0) -> torch.Tensor:
    """The README example end to end (README.md:66-84): invert then edit, y0 packed [B, L, 64]."""
    inverted = rf_inversion_invert(y0, v_inv, y1, num_inversion_steps=num_inversion_steps, gamma=gamma,
                                   strength=strength)
    return rf_inversion_edit(inverted, y0, v_edit, num_inference_steps=num_inference_steps, eta=eta,
                             start_timestep=start_timestep, stop_timestep=stop_timestep, strength=strength)


def rf_inversion_evaluations(num_inversion_steps: int = 28, num_inference_steps: int = 28, strength: float = 1.0) -> dict:
    """Model evaluations: inversion len(sigmas) - 1, edit len(timesteps) (both = steps at strength 1)."""
    def kept(n):
        return n - int(max(n - min(n * strength, n), 0))
    return {"inversion": kept(num_inversion_steps), "edit": kept(num_inference_steps),
            "total": kept(num_inversion_steps) + kept(num_inference_steps)}
