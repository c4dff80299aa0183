"""Sanity tests of tests/velocity_reference.py (the independent FlowEdit / UniEdit-Flow / RF-Inversion
references the engine's fidelity tests compare against): analytic velocity fields, the schedules against
diffusers' own FlowMatchEulerDiscreteScheduler, the official NaN of the FLUX UniEdit mask and its finite
limit, the evaluation counts at the official defaults, and - where the official git snapshots are on this
machine (/work/.mirror, or $VELOCITY_REFERENCE_MIRRORS) - bit-exact agreement with the official code itself,
run on toy velocity fields through stand-in pipelines."""
from __future__ import annotations

import ast
import contextlib
import math
import os
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

import velocity_reference as vr

MIRRORS = Path(os.environ.get("VELOCITY_REFERENCE_MIRRORS", "/work/.mirror"))
FLOWEDIT = ("fallenshock+FlowEdit", "457f402")
UNIEDIT = ("DSL-Lab+UniEdit-Flow", "69f7e81")
RFINV = ("huggingface+diffusers", "c9e4fab42ca481fe8e0d2456b54ec900fb57730d")  # the merged community pipeline


# ----------------------------------------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------------------------------------

def _bt(t, x):
    return t.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


def straight_field(m, s):
    """The exact velocity of the straight-line coupling of N(0, I) noise e with the Gaussian data m + s*e:
    x_t = (1 - t)(m + s e) + t e moves at the constant velocity (1 - s) e - m, so as a field
    v(x, t) = (1 - s)(x - (1 - t) m) / ((1 - t) s + t) - m, regular on [0, 1] for s > 0. Every Euler-type
    scheme whose model times match its positions is exact on it."""
    def v(x, t):
        tt = _bt(t, x)
        return (1 - s) * (x - (1 - tt) * m) / ((1 - tt) * s + tt) - m
    return v


def on_trajectory(m, s, e, t):
    """The point at time t of the straight field's trajectory through the noise e."""
    return (1 - t) * (m + s * e) + t * e


def point_field(x0):
    """The straight-line field of Gaussian noise toward the fixed point x0: v(x, t) = (x - x0) / t, t > 0."""
    def v(x, t):
        return (x - x0) / _bt(t, x)
    return v


def toy_field(k):
    """A nonlinear, time-dependent stand-in for a transformer, one per prompt (k)."""
    def v(x, t):
        tt = _bt(t, x)
        return torch.sin(1.3 * x + k) * (1 + tt) - 0.4 * x + 0.1 * k * tt
    return v


class Counter:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, x, t):
        self.n += 1
        return self.f(x, t)


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------------

def test_pack_matches_bfl_rearrange_and_round_trips():
    """Fails if pack_latents does not order tokens and channels as the BFL prepare
    ("b c (h ph) (w pw) -> b (h w) (c ph pw)", sampling.py:18) or unpack_latents is not its inverse."""
    x = torch.randn(2, 16, 6, 8, generator=_g(0))
    p = vr.pack_latents(x)
    assert torch.equal(p, rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2))
    assert p.shape == (2, 12, 64)
    assert torch.equal(vr.unpack_latents(p, 6, 8), x)
    with pytest.raises(ValueError):
        vr.pack_latents(torch.zeros(1, 16, 5, 8))


# ----------------------------------------------------------------------------------------------------
# Schedules against diffusers
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def FMED():
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler


def _diffusers_flux(FMED, n, seq):
    s = FMED(**vr.FLUX_DEV_SCHEDULER)
    mu = vr.calculate_shift(seq)
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return s


@pytest.mark.parametrize("seq", [16, 1024, 4096])
def test_flux_dev_schedule_equals_diffusers(FMED, seq):
    """Fails if FlowEditFLUX's / RF-Inversion's schedule (sigmas=np.linspace(1, 1/T, T), mu from the FLUX.1-dev
    config, dynamic shifting) differs in any bit from diffusers' FlowMatchEulerDiscreteScheduler, or mu is
    off the (256, 0.5)-(4096, 1.15) line."""
    ts, sig = vr.flowedit_flux_schedule(28, seq)
    d = _diffusers_flux(FMED, 28, seq)
    assert torch.equal(ts, d.timesteps) and torch.equal(sig, d.sigmas)
    assert len(ts) == 28 and len(sig) == 29 and sig[-1] == 0
    rts, rsig = vr.rf_inversion_schedule(28, seq)
    assert torch.equal(rts, ts) and torch.equal(rsig, sig)
    assert vr.calculate_shift(256) == pytest.approx(0.5) and vr.calculate_shift(4096) == pytest.approx(1.15)


def test_sd3_and_wan_schedules_equal_diffusers(FMED):
    """Fails if FlowEditSD3's schedule (SD3 config, shift 3, set_timesteps(50)) or the shift-3 linspace path
    (Wan, 15 steps) differs from diffusers, or the init range is not [shift(0.001), 1]."""
    for n in (50, 15):
        ts, sig = vr.flowedit_sd3_schedule(n)
        d = FMED(**vr.SD3_SCHEDULER)
        smax, smin = vr.flow_match_init_sigma_range(3.0)
        assert (smax, smin) == (d.sigma_max, d.sigma_min)
        d.set_timesteps(n)
        assert torch.equal(ts, d.timesteps) and torch.equal(sig, d.sigmas)
    assert smin == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), rel=1e-6)


def test_float64_shift_of_diffusers_030_differs_by_ulps_only():
    """Fails if the diffusers-0.30 variant (custom sigmas shifted in float64, FlowEdit's pinned version) drifts
    more than a few float32 ulps from the float32 variant, or is identical (then the flag would be moot)."""
    a = vr.flowedit_flux_schedule(28, 4096, custom_sigmas_float32=True)[1]
    b = vr.flowedit_flux_schedule(28, 4096, custom_sigmas_float32=False)[1]
    assert (a - b).abs().max() <= 4 * torch.finfo(torch.float32).eps


def test_bfl_get_schedule():
    """Fails if the BFL get_schedule is not N+1 decreasing floats from 1 to 0 on the same grid as the diffusers
    FLUX schedule (the same time shift), or if shift=False is not the plain linspace."""
    for seq in (64, 4096):
        ts = vr.flux_get_schedule(15, seq)
        assert len(ts) == 16 and ts[0] == 1.0 and ts[-1] == 0.0
        assert all(a > b for a, b in zip(ts[:-1], ts[1:]))
        assert np.allclose(ts, vr.flux_dev_schedule(15, seq)[1].numpy(), atol=1e-6)
    assert np.allclose(vr.flux_get_schedule(4, 64, shift=False), [1, 0.75, 0.5, 0.25, 0])


@pytest.mark.parametrize("pipeline", ["sd3", "wan", "flux"])
def test_uniedit_schedules_against_diffusers(FMED, pipeline):
    """Fails if UniEdit's schedule is not diffusers' set_timesteps with its first N - floor(alpha N) entries
    dropped, if UniInv's is not diffusers' sigmas with a 0 appended, flipped and cut to floor(alpha N) + 1
    (on the linspace path, where both shift in float64), if zero_initial does not drop the leading 0, or if
    the inversion does not end where the edit starts."""
    n, alpha, seq = 15, 0.6, 1024
    sch = vr.unieditflow_pipeline_schedules(pipeline, n, alpha, image_seq_len=seq)
    k = math.floor(alpha * n)
    if pipeline == "flux":
        d = _diffusers_flux(FMED, n, seq)
    else:
        d = FMED(num_train_timesteps=1000, shift=3.0)
        d.set_timesteps(n)
    ets, esig = sch["edit"]
    assert torch.equal(ets, d.timesteps[n - k:]) and torch.equal(esig, d.sigmas[n - k:])
    its, isig = sch["inversion"]
    assert len(its) == len(isig) == k + 1 and isig[0] == 0 and its[0] == 0
    if pipeline != "flux":   # quirk D1: UniInv shifts the Flux pipeline's float64 sigmas without a cast
        assert torch.equal(isig, d.sigmas.flip(0)[: k + 1])
        assert torch.equal(its[1:], d.timesteps.flip(0)[:k])
        assert isig[-1] == esig[0]
    else:
        assert abs(isig[-1] - esig[0]) <= 2 * torch.finfo(torch.float32).eps
    zts, zsig = vr.unieditflow_pipeline_schedules(pipeline, n, alpha, zero_initial=True, image_seq_len=seq)["inversion"]
    assert torch.equal(zsig, isig[1:k + 1]) and torch.equal(zts, its[1:k + 1])


def test_rf_inversion_strength_trims_the_top():
    """Fails if get_timesteps' strength rule (t_start = int(N - min(N*strength, N))) is not applied."""
    ts, sig = vr.rf_inversion_schedule(28, 1024)
    ts2, sig2 = vr.rf_inversion_schedule(28, 1024, strength=0.5)
    assert torch.equal(ts2, ts[14:]) and torch.equal(sig2, sig[14:])


# ----------------------------------------------------------------------------------------------------
# FlowEdit on analytic fields
# ----------------------------------------------------------------------------------------------------

def test_flowedit_identical_velocities_return_x_src():
    """Fails if FlowEdit with the same source and target velocity does not return x_src: bit for bit for a
    field that does not depend on x (V_delta is then exactly 0), and to float32 rounding for a nonlinear one
    (zt_tar = zt_edit + zt_src - x_src, FlowEdit_utils.py:192/346, is zt_src only up to rounding). A wrong
    zt_tar coupling, wrong return value or a stray cast breaks it."""
    x = torch.randn(1, 16, 4, 6, generator=_g(1))
    g = torch.randn(1, 6, 64, generator=_g(2))
    flat = lambda z, t: g * _bt(t, z)                            # noqa: E731
    noises = [torch.randn(1, 6, 64, generator=_g(10 + k)) for k in range(30)]
    assert torch.equal(vr.flowedit_flux(x, flat, flat, noises), x)
    f = toy_field(0.0)
    torch.testing.assert_close(vr.flowedit_flux(x, f, f, noises), x, atol=1e-6, rtol=0)
    noises = [torch.randn(1, 16, 4, 6, generator=_g(10 + k)) for k in range(60)]
    gu = vr.unpack_latents(g, 4, 6)
    flat = lambda z, t: gu * _bt(t, z)                           # noqa: E731
    assert torch.equal(vr.flowedit_sd3(x, flat, flat, noises), x)
    torch.testing.assert_close(vr.flowedit_sd3(x, f, f, noises), x, atol=1e-6, rtol=0)


def test_flowedit_constant_offset_moves_by_offset_times_start_sigma():
    """Fails if the Euler times do not telescope from the first run step (sigma index T - n_max) to 0: with
    x-independent fields and v_tar = v_src + c the edit is x_src - c * sigma_start (FLUX: sigmas[4] of 28;
    SD3: timesteps[17] / 1000 of 50)."""
    x = torch.randn(1, 16, 4, 4, generator=_g(2))
    c = torch.randn(1, 4, 64, generator=_g(3))
    f = lambda z, t: torch.cos(3 * _bt(t, z)) * torch.ones_like(z)   # noqa: E731
    noises = [torch.randn(1, 4, 64, generator=_g(20 + k)) for k in range(24)]
    out = vr.flowedit_flux_packed(vr.pack_latents(x), f, lambda z, t: f(z, t) + c, noises)
    sig = vr.flowedit_flux_schedule(28, 4)[1]
    torch.testing.assert_close(out, vr.pack_latents(x) - c * sig[4], atol=1e-6, rtol=0)
    cu = torch.randn(1, 16, 4, 4, generator=_g(4))
    noises = [torch.randn(1, 16, 4, 4, generator=_g(50 + k)) for k in range(33)]
    out = vr.flowedit_sd3(x, f, lambda z, t: f(z, t) + cu, noises)
    ts = vr.flowedit_sd3_schedule(50)[0]
    torch.testing.assert_close(out, x - cu * (ts[17] / 1000), atol=1e-6, rtol=0)


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_flowedit_nmin_tail_reconstructs_on_point_field(which):
    """Fails if the n_min tail (SDEdit start at sigma of step T - n_min, then Euler with the target velocity;
    FLUX tail also for SD3) is wrong: with v = (x - x_src)/t (straight lines to x_src, Euler-exact) and equal
    sides, the result must be x_src."""
    x = torch.randn(1, 16, 4, 4, generator=_g(5))
    if which == "flux":
        xp = vr.pack_latents(x)
        f = point_field(xp)
        noises = [torch.randn_like(xp) for _ in range(40)]
        out = vr.flowedit_flux_packed(xp, f, f, noises, n_avg=2, n_min=3, n_max=10)
        torch.testing.assert_close(out, xp, atol=1e-5, rtol=0)
    else:
        f = point_field(x)
        noises = [torch.randn_like(x) for _ in range(40)]
        out = vr.flowedit_sd3(x, f, f, noises, n_min=5, n_max=12)
        torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_flowedit_noise_draw_order():
    """Fails if the draws are not taken as the official loop takes them: n_avg per averaging step in step order,
    one more at the n_min switch, none after; and draw j*n_avg + k is the k-th draw of step j."""
    T, n_max, n_min, n_avg = 8, 5, 2, 2
    x = torch.randn(1, 16, 2, 2, generator=_g(6))
    noises = [torch.randn(1, 16, 2, 2, generator=_g(100 + k)) for k in range(20)]
    asked, seen = [], []

    def noise(k):
        asked.append(k)
        return noises[k]

    def v(z, t):
        seen.append((z.clone(), t.clone()))
        return torch.zeros_like(z)
    vr.flowedit_sd3(x, v, v, noise, T_steps=T, n_avg=n_avg, n_min=n_min, n_max=n_max)
    ev = vr.flowedit_evaluations(T, n_max, n_min, n_avg)
    assert asked == list(range(ev["noise_draws"])) == list(range(7))
    ts = vr.flowedit_sd3_schedule(T)[0]
    for j in range(3):                      # averaging steps i = 3, 4, 5
        t_i = ts[3 + j] / 1000
        for k in range(n_avg):
            z_src, t = seen[2 * (j * n_avg + k)]
            assert torch.equal(z_src, (1 - t_i) * x + t_i * noises[j * n_avg + k])
            assert torch.equal(t, (ts[3 + j].expand(1)) / 1000)
    with pytest.raises(RuntimeError):
        vr.flowedit_sd3(x, v, v, noises, T_steps=T, n_min=6, n_max=5)


# ----------------------------------------------------------------------------------------------------
# UniEdit-Flow on analytic fields; the mask
# ----------------------------------------------------------------------------------------------------

def _straight_setup(shape, seed):
    m = torch.randn(shape, generator=_g(seed))
    s = 0.3 + torch.rand(shape, generator=_g(seed + 1))
    e = torch.randn(shape, generator=_g(seed + 2))
    return m, s, e, straight_field(m, s)


def test_uniedit_flux_reconstructs_and_official_mask_is_nan_for_equal_prompts():
    """Fails if the FLUX UniInv is not exact on a straight field (it must land on the trajectory at the
    inversion's top time, reversed schedule index round(0.6*15) = 9), if the FLUX edit with equal prompts does
    not return x0 under the finite mask, or if the official mask (0/0) does not turn the edit into NaN."""
    m, s, e, f = _straight_setup((1, 6, 64), 7)
    x0 = on_trajectory(m, s, e, 0.0)
    ts = vr.flux_get_schedule(15, 6)
    z = vr.uniedit_flux_invert(x0, f, ts, alpha=0.6)
    torch.testing.assert_close(z, on_trajectory(m, s, e, ts[::-1][9]), atol=1e-5, rtol=0)
    out = vr.uniedit_flux_edit(z, f, f, ts, alpha=0.6, omega=5.0, official_nan=False)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert torch.isnan(vr.uniedit_flux_edit(z, f, f, ts, alpha=0.6, omega=5.0)).all()
    full = vr.uniedit_flux(x0, f, f, f, official_nan=False)
    torch.testing.assert_close(full, x0, atol=1e-5, rtol=0)


def test_uniedit_flux_mask_rules():
    """Fails if the FLUX mask is not |diff| averaged over dim 2, min-max over the whole batch (not per
    sample), without epsilon; or if the finite variant is not 0 for equal inputs; or if the diffusers mask
    is not the signed mean, per-sample min-max with +1e-7, on dim 1 for 4-D/5-D and dim 2 for 3-D."""
    a = torch.zeros(2, 3, 4)
    b = torch.zeros(2, 3, 4)
    b[0, 0] = 1.0        # |diff| mean 1 on token 0 of sample 0
    b[1, 1] = -0.5       # |diff| mean 0.5 on token 1 of sample 1
    m = vr.uniedit_flux_mask(b, a)
    assert m.shape == (2, 3, 1)
    assert m[0, 0, 0] == 1 and m[1, 1, 0] == 0.5 and m[0, 1, 0] == 0   # global min-max
    assert torch.isnan(vr.uniedit_flux_mask(a, a)).all()
    assert torch.equal(vr.uniedit_flux_mask(a, a, official_nan=False), torch.zeros(2, 3, 1))
    md = vr.uniedit_diffusers_mask(b - a)
    assert md.shape == (2, 3, 1)
    assert md[0, 0, 0] == pytest.approx(1.0, abs=1e-6) and md[1, 1, 0] == 0 and md[1, 0, 0] == pytest.approx(1, abs=1e-6)
    g4 = torch.randn(2, 5, 3, 3, generator=_g(8))
    m4 = vr.uniedit_diffusers_mask(g4)
    mean = g4.mean(1, keepdim=True)
    lo = mean.amin((1, 2, 3), keepdim=True)
    hi = mean.amax((1, 2, 3), keepdim=True)
    assert torch.equal(m4, (mean - lo) / (hi - lo + 1e-7))
    assert vr.uniedit_diffusers_mask(torch.randn(1, 4, 2, 3, 3)).shape == (1, 1, 2, 3, 3)
    assert torch.equal(vr.uniedit_diffusers_mask(torch.zeros(1, 4, 2, 2)), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError):
        vr.uniedit_diffusers_mask(torch.zeros(2, 3))


@pytest.mark.parametrize("pipeline,shape", [("sd3", (1, 4, 6, 6)), ("flux", (1, 9, 64)), ("wan", (1, 4, 2, 4, 4))])
def test_uniedit_diffusers_reconstructs_with_equal_prompts(pipeline, shape):
    """Fails if the UniInv scheduler loop is not exact on a straight field (it must reach the trajectory at
    the inversion's last sigma), if UniEdit with equal prompts (mask 0 thanks to the 1e-7, correction 0 even
    at omega 5) does not come back to x0, or if the two halves of the edit batch differ."""
    m, s, e, f = _straight_setup(shape, 9)
    x0 = on_trajectory(m, s, e, 0.0)
    sch = vr.unieditflow_pipeline_schedules(pipeline, 15, 0.6, image_seq_len=shape[1])
    z = vr.uniinv_diffusers(x0, f, *sch["inversion"], flux_pipeline_timestep=pipeline == "flux")
    torch.testing.assert_close(z, on_trajectory(m, s, e, sch["inversion"][1][-1].item()), atol=1e-5, rtol=0)
    out = vr.unieditflow_diffusers(x0, f, f, f, pipeline=pipeline)
    assert out.shape == (2,) + shape[1:] and torch.equal(out[:1], out[1:])
    torch.testing.assert_close(out[:1], x0, atol=1e-5, rtol=0)


def test_uniedit_omega_zero_identical_prompts_reconstruct_and_zero_init_differs():
    """Fails if omega 0 with equal prompts is not plain reconstruction in both implementations, or if
    zero_initial / zero_init do not change the inversion (they skip the t = 0 evaluation)."""
    m, s, e, f = _straight_setup((1, 4, 64), 11)
    x0 = on_trajectory(m, s, e, 0.0)
    out = vr.uniedit_flux(x0, f, f, f, omega=0.0, official_nan=False)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    out = vr.unieditflow_diffusers(x0, f, f, f, pipeline="flux", omega=0.0)
    torch.testing.assert_close(out[:1], x0, atol=1e-5, rtol=0)
    ts = vr.flux_get_schedule(15, 4)
    assert not torch.allclose(vr.uniedit_flux_invert(x0, f, ts, zero_init=True), vr.uniedit_flux_invert(x0, f, ts))


# ----------------------------------------------------------------------------------------------------
# RF-Inversion on analytic fields
# ----------------------------------------------------------------------------------------------------

def test_rf_inversion_gamma0_eta0_is_plain_euler():
    """Fails if gamma 0 / eta 0 is not plain Euler: the inversion with model times i/N (N = steps + 1) and
    steps sigmas[i] - sigmas[i+1] from the top, the sampling with model times t/1000 and steps
    sigmas[i+1] - sigmas[i]; if a translation field (t-independent) is not reconstructed; or if the
    inversion's time mismatch (quirk R1) vanished on a time-dependent straight field."""
    m, s, e, f = _straight_setup((1, 4, 64), 12)
    y0 = on_trajectory(m, s, e, 0.0)
    y1 = torch.randn(1, 4, 64, generator=_g(13))
    inv = vr.rf_inversion_invert(y0, f, y1, gamma=0.0)
    sig = vr.rf_inversion_schedule(28, 4)[1]
    Y = y0
    for i in range(28):
        Y = Y + f(Y, torch.tensor([i / 29])) * (sig[i] - sig[i + 1])
    torch.testing.assert_close(inv, Y, atol=1e-6, rtol=0)
    # the sampling half is exact on the straight field: from the noise end it lands on x0
    out = vr.rf_inversion_edit(e, y0, f, eta=0.0)
    torch.testing.assert_close(out, y0, atol=1e-5, rtol=0)
    # R1: the inversion evaluates at i/29 while its position follows the shifted sigmas: off the trajectory
    assert (inv - e).abs().max() > 1e-3
    c = torch.randn(1, 4, 64, generator=_g(14))
    trans = lambda x, t: c                                      # noqa: E731  (translation field)
    out = vr.rf_inversion(y0, trans, trans, y1, gamma=0.0, eta=0.0)
    torch.testing.assert_close(out, y0, atol=1e-5, rtol=0)


def test_rf_inversion_eta1_everywhere_returns_y0():
    """Fails if the controlled reverse field is not (y0 - x)/(1 - t_i) with t_i = 1 - t/1000 on
    start <= i < stop: with eta 1 on all steps the latent contracts onto y0 whatever the model."""
    y0 = torch.randn(1, 4, 64, generator=_g(15))
    x = torch.randn(1, 4, 64, generator=_g(16))
    out = vr.rf_inversion_edit(x, y0, toy_field(2.0), eta=1.0, start_timestep=0.0, stop_timestep=1.0)
    torch.testing.assert_close(out, y0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        vr.rf_inversion_edit(x, y0, toy_field(2.0), start_timestep=0.5, stop_timestep=0.25)


# ----------------------------------------------------------------------------------------------------
# Evaluation counts at the official defaults
# ----------------------------------------------------------------------------------------------------

def test_evaluation_counts_at_official_defaults():
    """Fails if the references call the model a different number of times than the official code at its
    defaults: FlowEdit FLUX 28 steps n_max 24 -> 48; SD3 50 steps n_max 33 -> 66 guided calls = 132 CFG
    rows (33 transformer calls); UniEdit 15 steps alpha 0.6 -> 10 + 18 (both codes); RF-Inversion 28 + 28."""
    x = torch.randn(1, 16, 2, 2, generator=_g(17))
    f = toy_field(0.5)
    a, b = Counter(f), Counter(f)
    vr.flowedit_flux(x, a, b, lambda k: torch.zeros(1, 1, 64))
    assert a.n + b.n == 48 == vr.flowedit_evaluations(28, 24)["velocity_calls"]
    rows = [Counter(f) for _ in range(4)]
    vr.flowedit_sd3_cfg(x, *rows, lambda k: torch.zeros_like(x))
    ev = vr.flowedit_evaluations(50, 33)
    assert sum(r.n for r in rows) == 132 == ev["sd3_rows"] and ev["sd3_transformer_calls"] == 33
    assert ev["velocity_calls"] == 66
    xp = vr.pack_latents(x)
    inv, src, trg = Counter(f), Counter(f), Counter(toy_field(1.5))
    vr.uniedit_flux(xp, inv, src, trg)
    ev = vr.uniedit_flux_evaluations(15, 0.6)
    assert (inv.n, src.n + trg.n) == (10, 18) == (ev["inversion"], ev["edit"])
    inv, src, trg = Counter(f), Counter(f), Counter(toy_field(1.5))
    vr.unieditflow_diffusers(x, inv, src, trg, pipeline="sd3")
    ev = vr.uniedit_diffusers_evaluations(15, 0.6)
    assert (inv.n, src.n, trg.n) == (10, 9, 9) and ev["total_rows"] == 28
    inv, ed = Counter(f), Counter(f)
    vr.rf_inversion(xp, inv, ed, torch.zeros_like(xp))
    assert (inv.n, ed.n) == (28, 28) and vr.rf_inversion_evaluations()["total"] == 56


# ----------------------------------------------------------------------------------------------------
# Bit-exact agreement with the official code (skipped without the snapshots)
# ----------------------------------------------------------------------------------------------------

def _official(repo_rev, path):
    repo, rev = repo_rev
    d = MIRRORS / repo / "repo"
    try:
        return subprocess.run(["git", "-C", str(d), "show", f"{rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"official snapshot {repo}@{rev}:{path} not available")


def _exec_module(text, name):
    """Runs official source as a module (registered in sys.modules: its dataclasses look themselves up)."""
    import sys
    name = f"_official_{name}"
    mod = types.ModuleType(name)
    sys.modules[name] = mod
    exec(compile(text, name, "exec"), mod.__dict__)
    return mod


class _FakeFluxTransformer:
    def __init__(self, by_prompt):
        self.by_prompt = by_prompt
        self.config = types.SimpleNamespace(in_channels=64, guidance_embeds=True)

    def __call__(self, hidden_states, timestep, encoder_hidden_states, **kw):
        return (self.by_prompt[encoder_hidden_states](hidden_states, timestep),)


class _FakeFlowEditFluxPipe:
    """What FlowEditFLUX touches of a diffusers 0.30 FluxPipeline (vae_scale_factor 16); prompts pass through
    as their own embeddings and pick the velocity."""
    vae_scale_factor = 16

    def __init__(self, scheduler, by_prompt):
        self.scheduler, self.transformer = scheduler, _FakeFluxTransformer(by_prompt)

    def check_inputs(self, **kw):
        pass

    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents):
        return latents.to(device=device, dtype=dtype), None

    @staticmethod
    def _pack_latents(latents, batch_size, num_channels_latents, height, width):
        return vr.pack_latents(latents)

    @staticmethod
    def _unpack_latents(latents, height, width, vae_scale_factor):
        return vr.unpack_latents(latents, height * 2 // vae_scale_factor, width * 2 // vae_scale_factor)

    def encode_prompt(self, prompt, prompt_2, device):
        return prompt, None, None


class _FakeSD3Pipe:
    """What FlowEditSD3 touches of a StableDiffusion3Pipeline: rows carry a prompt code, the transformer
    dispatches each row to its velocity (0 = the negative prompt "", 1 = source, 2 = target)."""

    def __init__(self, fields):
        self.fields, self._guidance_scale = fields, 1.0
        codes = {"src": 1.0, "tar": 2.0}
        self.codes = codes

        def transformer(hidden_states, timestep, encoder_hidden_states, **kw):
            rows = [self.fields[int(c)](hidden_states[r:r + 1], timestep[r:r + 1] / 1000)
                    for r, c in enumerate(encoder_hidden_states[:, 0].tolist())]
            return (torch.cat(rows),)
        self.transformer = transformer

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    def encode_prompt(self, prompt, negative_prompt, do_classifier_free_guidance, **kw):
        pos = torch.full((1, 1), self.codes[prompt])
        neg = torch.zeros(1, 1) if do_classifier_free_guidance else None
        return pos, neg, pos, neg


@pytest.fixture(scope="module")
def flowedit_official():
    return _exec_module(_official(FLOWEDIT, "FlowEdit_utils.py"), "FlowEdit_utils")


@pytest.mark.parametrize("n_min,n_avg,dtype", [(0, 1, torch.float32), (3, 2, torch.float32), (2, 1, torch.float16)])
def test_flowedit_flux_bit_exact_with_official(flowedit_official, FMED, n_min, n_avg, dtype):
    """Fails if flowedit_flux differs in any bit from the official FlowEditFLUX (diffusers' scheduler, global
    RNG draws) run on the same toy fields and the same draws, including the n_min tail and float16 latents
    (run_script.py loads the pipeline in float16, line 36)."""
    x = torch.randn(1, 16, 4, 6, generator=_g(20)).to(dtype)
    fs, ft = toy_field(0.3), toy_field(-0.7)
    pipe = _FakeFlowEditFluxPipe(FMED(**vr.FLUX_DEV_SCHEDULER), {"src": fs, "tar": ft})
    torch.manual_seed(1234)
    official = flowedit_official.FlowEditFLUX(pipe, pipe.scheduler, x, "src", "tar", "", n_avg=n_avg, n_min=n_min,
                                              n_max=10 + n_min)
    torch.manual_seed(1234)
    xp = vr.pack_latents(x)
    draws = [torch.randn_like(xp) for _ in range(vr.flowedit_evaluations(28, 10 + n_min, n_min, n_avg)["noise_draws"])]
    ours = vr.flowedit_flux(x, fs, ft, draws, n_avg=n_avg, n_min=n_min, n_max=10 + n_min)
    assert torch.equal(official, ours)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_flowedit_sd3_bit_exact_with_official_and_its_nmin_crash(flowedit_official, FMED, dtype):
    """Fails if flowedit_sd3_cfg differs in any bit from the official FlowEditSD3 (CFG 3.5 / 13.5, four-row
    batch), or if the official code stopped crashing for n_min > 0 (the reason the SD3 reference follows the
    FLUX tail)."""
    x = torch.randn(1, 16, 4, 4, generator=_g(21)).to(dtype)
    un, fs, ft = toy_field(0.1), toy_field(0.9), toy_field(-1.1)
    pipe = _FakeSD3Pipe({0: un, 1: fs, 2: ft})
    torch.manual_seed(99)
    official = flowedit_official.FlowEditSD3(pipe, FMED(**vr.SD3_SCHEDULER), x, "src", "tar", "", n_max=33)
    torch.manual_seed(99)
    draws = [torch.randn_like(x) for _ in range(33)]
    ours = vr.flowedit_sd3_cfg(x, fs, un, ft, un, draws)
    assert torch.equal(official, ours)
    with pytest.raises(NameError):
        flowedit_official.FlowEditSD3(_FakeSD3Pipe({0: un, 1: fs, 2: ft}), FMED(**vr.SD3_SCHEDULER), x, "src", "tar",
                                      "", n_min=2, n_max=5)


@pytest.fixture(scope="module")
def bfl_sampling():
    text = _official(UNIEDIT, "UniEdit-Flow_FLUX/src/flux/sampling.py")
    wanted = {"time_shift", "get_lin_function", "get_schedule", "edit_uniedit", "unpack"}
    tree = ast.parse(text)
    src = "\n\n".join(ast.get_source_segment(text, n) for n in tree.body
                      if isinstance(n, ast.FunctionDef) and n.name in wanted)
    mod = types.ModuleType("bfl_sampling")
    mod.__dict__.update(torch=torch, math=math, Tensor=torch.Tensor, Flux=object, rearrange=rearrange,
                        Callable=__import__("typing").Callable, deepcopy=__import__("copy").deepcopy)
    exec(compile(src, "sampling.py", "exec"), mod.__dict__)
    return mod


@pytest.mark.parametrize("zero_init,same,dtype", [(False, False, torch.float32), (True, False, torch.float32),
                                                   (False, True, torch.float32), (False, False, torch.bfloat16)])
def test_uniedit_flux_bit_exact_with_official(bfl_sampling, zero_init, same, dtype):
    """Fails if the FLUX UniEdit reference (get_schedule, inversion, edit, mask; NaN for equal prompts) differs
    in any bit from the official edit_uniedit run as edit.py runs it (bfloat16 latents as edit.py:43 encodes
    them included), or the unpack differs from BFL's."""
    x = torch.randn(1, 16, 4, 6, generator=_g(22)).to(dtype)
    xp = vr.pack_latents(x)
    fields = {"": toy_field(0.0), "src": toy_field(0.4), "trg": toy_field(0.4 if same else -0.8)}

    def model(img, img_ids, txt, txt_ids, y, timesteps, guidance, info):
        return fields[txt](img, timesteps), info
    info = {"inject_step": 0, "alpha": 0.6, "omega": 5.0, "zero_init": zero_init}
    ts = bfl_sampling.get_schedule(15, xp.shape[1])
    assert ts == vr.flux_get_schedule(15, xp.shape[1])
    z, info = bfl_sampling.edit_uniedit(model, xp, None, "", None, None, timesteps=ts, guidance=1, inverse=True, info=info)
    out, _ = bfl_sampling.edit_uniedit(model, z, None, "trg", None, None, timesteps=ts, guidance=1, inverse=False,
                                       info=info, src_txt="src")
    ours_z = vr.uniedit_flux_invert(xp, fields[""], ts, 0.6, zero_init)
    ours = vr.uniedit_flux(xp, fields[""], fields["src"], fields["trg"], zero_init=zero_init)
    assert torch.equal(z, ours_z)
    assert torch.equal(out, ours) if not same else (torch.isnan(out).all() and torch.isnan(ours).all())
    assert torch.equal(bfl_sampling.unpack(xp, 32, 48), x)


@pytest.fixture(scope="module")
def uni_schedulers():
    inv = _exec_module(_official(UNIEDIT, "UniEdit-Flow_diffusers/schedulers/UniInvEulerScheduler.py"), "UniInv")
    edit = _exec_module(_official(UNIEDIT, "UniEdit-Flow_diffusers/schedulers/UniEditEulerScheduler.py"), "UniEdit")
    return inv.UniInvEulerScheduler, edit.UniEditEulerScheduler


@pytest.mark.parametrize("pipeline,shape,zero_initial,dtype", [
    ("sd3", (1, 4, 6, 6), False, torch.float32), ("flux", (1, 9, 64), True, torch.float32),
    ("wan", (1, 4, 2, 4, 4), False, torch.float32), ("sd3", (1, 4, 6, 6), True, torch.float16),
    ("flux", (1, 9, 64), False, torch.bfloat16), ("wan", (1, 4, 2, 4, 4), False, torch.bfloat16)])
def test_uniedit_diffusers_bit_exact_with_official_schedulers(uni_schedulers, pipeline, shape, zero_initial, dtype):
    """Fails if the diffusers-path references (schedules, UniInv loop, UniEdit loop with the signed per-sample
    mask, the [src, trg] batch) differ in any bit from the official UniInv/UniEditEulerScheduler driven the way
    the SD3 / Flux / Wan pipelines drive a scheduler."""
    Inv, Edit = uni_schedulers
    n, alpha, omega = 15, 0.6, 5.0
    cfg = vr.FLUX_DEV_SCHEDULER if pipeline == "flux" else dict(num_train_timesteps=1000, shift=3.0)
    fl = pipeline == "flux"

    def set_ts(s):
        if fl:
            s.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=vr.calculate_shift(shape[1]))
        else:
            s.set_timesteps(n)

    inv_s, edit_s = Inv(**cfg), Edit(**cfg)
    inv_s.set_hyperparameters(zero_initial=zero_initial, alpha=alpha)
    edit_s.set_hyperparameters(alpha=alpha, omega=omega)
    set_ts(inv_s)
    set_ts(edit_s)
    sch = vr.unieditflow_pipeline_schedules(pipeline, n, alpha, zero_initial, shape[1])
    assert torch.equal(inv_s.timesteps, sch["inversion"][0]) and torch.equal(inv_s.sigmas, sch["inversion"][1])
    assert torch.equal(edit_s.timesteps, sch["edit"][0]) and torch.equal(edit_s.sigmas, sch["edit"][1])
    x0 = torch.randn(shape, generator=_g(23)).to(dtype)
    fi, fs, ft = toy_field(0.0), toy_field(0.5), toy_field(-0.6)

    def tt(t, lat):
        t = t.expand(lat.shape[0])
        return (t.to(lat.dtype) if fl else t) / 1000

    lat = x0
    for t in inv_s.timesteps:
        lat = inv_s.step(fi(lat, tt(t, lat)), t, lat, return_dict=False)[0]
    assert torch.equal(lat, vr.uniinv_diffusers(x0, fi, *sch["inversion"], zero_initial, fl))
    z = lat
    lat = torch.cat([z, z])
    for t in edit_s.timesteps:
        out = torch.cat([fs(lat[:1], tt(t, lat[:1])), ft(lat[1:], tt(t, lat[1:]))])
        lat = edit_s.step(out, t, lat, return_dict=False)[0]
    ours = vr.unieditflow_diffusers(x0, fi, fs, ft, pipeline=pipeline, zero_initial=zero_initial)
    assert torch.equal(lat, ours)


@pytest.fixture(scope="module")
def rf_pipeline():
    mod = _exec_module(_official(RFINV, "examples/community/pipeline_flux_rf_inversion.py"), "pipeline_flux_rf_inversion")
    return mod


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rf_inversion_bit_exact_with_official(rf_pipeline, FMED, dtype):
    """Fails if rf_inversion_invert / rf_inversion_edit differ in any bit from the community pipeline's
    invert and __call__ (the README example's settings) on the same toy fields and the same y_1 draw, or the
    packing differs from its _pack_latents."""
    P = rf_pipeline.RFInversionFluxPipeline
    fi, fe = toy_field(0.2), toy_field(-0.4)

    class Fake:
        invert, __call__, get_timesteps, check_inputs = P.invert, P.__call__, P.get_timesteps, P.check_inputs
        _callback_tensor_inputs = P._callback_tensor_inputs
        prepare_latents_inversion = P.prepare_latents_inversion
        _pack_latents = staticmethod(P._pack_latents)
        _prepare_latent_image_ids = staticmethod(P._prepare_latent_image_ids)
        guidance_scale, joint_attention_kwargs, interrupt = P.guidance_scale, P.joint_attention_kwargs, P.interrupt
        vae_scale_factor, default_sample_size, _execution_device = 8, 128, torch.device("cpu")
        text_encoder = types.SimpleNamespace(dtype=dtype)

        def __init__(self, image_latents):
            self.image_latents = image_latents
            self.scheduler = FMED(**vr.FLUX_DEV_SCHEDULER)
            self.transformer = _FakeFluxTransformer({"": fi, "tomato": fe})

        def encode_image(self, image, dtype=None, height=None, width=None):
            return self.image_latents.to(dtype), None

        def encode_prompt(self, prompt, prompt_2, device=None, **kw):
            return prompt, None, None

        def progress_bar(self, total):
            return contextlib.nullcontext(types.SimpleNamespace(update=lambda: None))

        def maybe_free_model_hooks(self):
            pass

    x = torch.randn(1, 16, 4, 6, generator=_g(24)).to(dtype)
    pipe = Fake(x)
    torch.manual_seed(7)
    inv, img_lat, ids = pipe.invert(image=None, num_inversion_steps=28, gamma=0.5, height=32, width=48)
    out = pipe(prompt="tomato", inverted_latents=inv, image_latents=img_lat, latent_image_ids=ids, height=32,
               width=48, start_timestep=0, stop_timestep=7 / 28, num_inference_steps=28, eta=0.9,
               output_type="latent").images
    torch.manual_seed(7)
    xp = vr.pack_latents(x)
    assert torch.equal(img_lat, xp)
    y1 = torch.randn_like(xp)
    ours_inv = vr.rf_inversion_invert(xp, fi, y1)
    assert torch.equal(inv, ours_inv)
    assert torch.equal(out, vr.rf_inversion_edit(ours_inv, xp, fe))
