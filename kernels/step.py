"""Every reverse step, fused: one kernel for DDPM (full or respaced), DDIM(η), DPM-Solver++ (2M, 3M;
ODE and SDE), UniPC and iPNDM.

Each step is one row of a coefficient table (tables.py, docs/notation.md):

    x̂_0 = X0_X x_t − X0_EPS ε̂                 clamped to [-1, 1] when clipping
    x_s = C_X0 x̂_0 + C_X x_t + C_EPS ε̂ + C_H1 h_1 + C_H2 h_2 + C_H3 h_3 + SIGMA z

where ε̂ is the model's output, or, guided (classifier-free guidance, Ho & Salimans 2022), the
combination ε̂_u + GUIDE (ε̂_c − ε̂_u) of its conditional and unconditional outputs, formed in
registers: the guided ε̂ is never written. h_j is what the step j steps earlier stored (x̂_0, or
ε̂ = E_X x_t + E_M ε̂ for a noise-basis solver), kept in a ring of NH <= 3 slots that the step
turns itself: step k reads slot (k − j) % NH and writes slot k % NH.

One pass reads x_t, ε̂ (and the NH slots, for multistep solvers) and writes x_s in place or
not, optionally a second copy in another dtype and layout (the next model call's bf16
channels-last input) and this step's slot; z is drawn in-kernel at (seed, STREAM_REVERSE, t)
or passed in. With CHECK it also raises a per-sample flag when x_s is not finite, so a
sampler step is the model plus this one kernel.

Traffic per element: reads 2N (+NH·N for the ring, +N guided), writes N (+N for the second
copy, +N for the ring). The eager reference draws z (write N), then reads x_t, ε̂, z and writes
x_s through temporaries.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _checks
from ._cast import to_storage
from ._tile import at, channels_last, lane_mask, launch, noise4, row_index, tile
from .philox import STREAM_REVERSE, noise_torch
from .tables import C_EPS, C_H1, C_H2, C_H3, C_X, C_X0, E_M, E_X, GUIDE, HISTORY, LV_MAX, LV_MIN, NCOEF, SIGMA, X0_EPS, X0_X


@triton.jit
def _step_lane(
    x_ptr, e_ptr, eu_ptr, z_ptr, h1_ptr, h2_ptr, h3_ptr, o_ptr, oh_ptr, l_ptr, b, c, p, HW,
    x0x, x0e, cx0, cx, ce, ch1, ch2, ch3, ex, em, sig, lvlo, lvd, w, z,
    C: tl.constexpr, CE: tl.constexpr, G: tl.constexpr, CL_X: tl.constexpr, CL_E: tl.constexpr, CL_EU: tl.constexpr, CL_Z: tl.constexpr,
    CL_H: tl.constexpr, CL_O: tl.constexpr, CL_OH: tl.constexpr, CL_L: tl.constexpr,
    CLIP: tl.constexpr, DRAW: tl.constexpr, HAS_NOISE: tl.constexpr, NH: tl.constexpr, HIST_EPS: tl.constexpr,
    HAS_LOWP: tl.constexpr, EPS_TERM: tl.constexpr, GUIDED: tl.constexpr, LEARNED: tl.constexpr,
):
    m = lane_mask(p, HW, c, C, G)  # pixel in the image and channel c exists
    x = tl.load(at(x_ptr, b, c, p, HW, C, CL_X), mask=m).to(tl.float32)
    e = tl.load(at(e_ptr, b, c, p, HW, CE, CL_E), mask=m).to(tl.float32)  # CE = 2C: the output's ε̂ half, then v
    if GUIDED:
        eu = tl.load(at(eu_ptr, b, c, p, HW, CE, CL_EU), mask=m).to(tl.float32)
        e = eu + w * (e - eu)  # classifier-free guidance (Ho & Salimans 2022, eq. 6)
    x0 = x0x * x - x0e * e  # Ho et al. eq. 15
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    y = cx0 * x0 + cx * x  # the step's mean (the posterior mean for DDPM: eq. 7)
    if EPS_TERM:
        y += ce * e
    if NH > 0:  # multistep: the outputs stored 1, 2, 3 steps ago (read before this step's is written)
        y += ch1 * tl.load(at(h1_ptr, b, c, p, HW, C, CL_H), mask=m).to(tl.float32)
        if NH > 1:
            y += ch2 * tl.load(at(h2_ptr, b, c, p, HW, C, CL_H), mask=m).to(tl.float32)
        if NH > 2:
            y += ch3 * tl.load(at(h3_ptr, b, c, p, HW, C, CL_H), mask=m).to(tl.float32)
        if HIST_EPS:
            u = ex * x + em * e  # ε̂: what a noise-basis solver stores
        else:
            u = x0
        tl.store(at(oh_ptr, b, c, p, HW, C, CL_OH), to_storage(u, oh_ptr.dtype.element_ty), mask=m)
    if HAS_NOISE:
        z = tl.load(at(z_ptr, b, c, p, HW, C, CL_Z), mask=m).to(tl.float32)
    if LEARNED:  # learned range (Nichol & Dhariwal eq. 15): σ = exp(½ (f log β' + (1 − f) log β̃)), f = (v + 1)/2
        v = tl.load(at(e_ptr, b, c + C, p, HW, CE, CL_E), mask=m).to(tl.float32)  # the (conditional) output's v
        y += sig * tl.exp(lvlo + lvd * (v + 1.0) * 0.5) * z
    elif DRAW or HAS_NOISE:
        y += sig * z
    tl.store(at(o_ptr, b, c, p, HW, C, CL_O), to_storage(y, o_ptr.dtype.element_ty), mask=m)
    if HAS_LOWP:
        tl.store(at(l_ptr, b, c, p, HW, C, CL_L), to_storage(y, l_ptr.dtype.element_ty), mask=m)
    return tl.where(m, y * 0.0, 0.0)  # NaN exactly where y is not finite


@triton.jit
def _step_kernel(
    x_ptr,  # (B, C, H, W) x_t, the sampler's state (any float dtype)
    e_ptr,  # (B, CE, H, W) ε̂, the model's prediction (any float dtype); guided: the conditional one. CE = 2C: a
            # learned-variance output, ε̂ in channels [0, C) and v in [C, 2C) (read only if LEARNED)
    eu_ptr,  # (B, CE, H, W) the unconditional prediction, read only if GUIDED
    z_ptr,  # (B, C, H, W) explicit z, read only if HAS_NOISE
    h_ptr,  # (NH, B, C, H, W) the history ring, read only if NH > 0: slot (k - j) % NH holds what step k - j stored
    o_ptr,  # (B, C, H, W) x_s, written; may be x_ptr itself
    oh_ptr,  # (NH, B, C, H, W) where this step's value goes, slot k % NH, only if NH > 0; h_ptr itself, or (NH = 1) another
    l_ptr,  # (B, C, H, W) second copy of x_s, written only if HAS_LOWP
    flag_ptr,  # (B,) int64: max(flag, t) where x_s is not finite, only if CHECK
    k_ptr,  # (B,) int: each sample's row of the table (a multistep step: its step index, which turns the ring)
    ts_ptr,  # (ROWS,) int: each row's timestep t, the noise address; unused if ROW_IS_T
    seed_ptr,  # (B,) int64 key per sample, read only if DRAW
    tab_ptr,  # (ROWS, NCOEF) float32 coefficient table
    ROWS, HW, SLOT, stream,  # SLOT: the elements of one ring slot (B C H W)
    C: tl.constexpr, G: tl.constexpr, TILES: tl.constexpr, CL_X: tl.constexpr, CL_E: tl.constexpr, CL_EU: tl.constexpr,
    CL_Z: tl.constexpr, CL_H: tl.constexpr, CL_O: tl.constexpr, CL_OH: tl.constexpr, CL_L: tl.constexpr,
    CLIP: tl.constexpr, DRAW: tl.constexpr, HAS_NOISE: tl.constexpr, NH: tl.constexpr, HIST_EPS: tl.constexpr,
    HAS_LOWP: tl.constexpr, CHECK: tl.constexpr, ROW_IS_T: tl.constexpr, EPS_TERM: tl.constexpr, GUIDED: tl.constexpr,
    LEARNED: tl.constexpr, CE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(TILES, G, BLOCK)
    k_in = tl.load(k_ptr + b)
    k, bad = row_index(k_in, ROWS)  # an out-of-range row makes every coefficient NaN
    if ROW_IS_T:
        t = k
    else:
        t = tl.load(ts_ptr + k)
    row = tab_ptr + k * NCOEF
    x0x = tl.load(row + X0_X) + bad
    x0e = tl.load(row + X0_EPS) + bad
    cx0 = tl.load(row + C_X0) + bad
    cx = tl.load(row + C_X) + bad
    ce = 0.0  # the columns a variant does not use are not read: fewer registers
    ch1 = 0.0
    ch2 = 0.0
    ch3 = 0.0
    ex = 0.0
    em = 0.0
    sig = 0.0
    lvlo = 0.0
    lvd = 0.0
    h1_ptr = h_ptr
    h2_ptr = h_ptr
    h3_ptr = h_ptr
    if EPS_TERM:
        ce = tl.load(row + C_EPS) + bad
    if NH > 0:  # the ring turns with the step index: slot k % NH is written, (k - j) % NH holds step k - j's
        kk = k.to(tl.int64)
        slot = SLOT.to(tl.int64)
        oh_ptr += (kk % NH) * slot
        ch1 = tl.load(row + C_H1) + bad
        h1_ptr += ((kk + NH - 1) % NH) * slot
        if NH > 1:
            ch2 = tl.load(row + C_H2) + bad
            h2_ptr += ((kk + NH - 2) % NH) * slot
        if NH > 2:
            ch3 = tl.load(row + C_H3) + bad
            h3_ptr += ((kk + NH - 3) % NH) * slot
        if HIST_EPS:
            ex = tl.load(row + E_X) + bad
            em = tl.load(row + E_M) + bad
    if DRAW or HAS_NOISE:
        sig = tl.load(row + SIGMA) + bad
        if LEARNED:
            lvmin = tl.load(row + LV_MIN) + bad
            lvlo = 0.5 * lvmin
            lvd = 0.5 * (tl.load(row + LV_MAX) + bad - lvmin)
    w = 1.0
    if GUIDED:
        w = tl.load(row + GUIDE) + bad
    z0, z1, z2, z3 = noise4(seed_ptr, b, p, g, t, stream, DRAW, BLOCK)
    c = 4 * g
    acc = _step_lane(x_ptr, e_ptr, eu_ptr, z_ptr, h1_ptr, h2_ptr, h3_ptr, o_ptr, oh_ptr, l_ptr, b, c, p, HW, x0x, x0e, cx0, cx,
                     ce, ch1, ch2, ch3, ex, em, sig, lvlo, lvd, w, z0, C, CE, G, CL_X, CL_E, CL_EU, CL_Z, CL_H, CL_O, CL_OH, CL_L, CLIP, DRAW,
                     HAS_NOISE, NH, HIST_EPS, HAS_LOWP, EPS_TERM, GUIDED, LEARNED)
    if C > 1:
        acc += _step_lane(x_ptr, e_ptr, eu_ptr, z_ptr, h1_ptr, h2_ptr, h3_ptr, o_ptr, oh_ptr, l_ptr, b, c + 1, p, HW, x0x, x0e,
                          cx0, cx, ce, ch1, ch2, ch3, ex, em, sig, lvlo, lvd, w, z1, C, CE, G, CL_X, CL_E, CL_EU, CL_Z, CL_H, CL_O, CL_OH,
                          CL_L, CLIP, DRAW, HAS_NOISE, NH, HIST_EPS, HAS_LOWP, EPS_TERM, GUIDED, LEARNED)
    if C > 2:
        acc += _step_lane(x_ptr, e_ptr, eu_ptr, z_ptr, h1_ptr, h2_ptr, h3_ptr, o_ptr, oh_ptr, l_ptr, b, c + 2, p, HW, x0x, x0e,
                          cx0, cx, ce, ch1, ch2, ch3, ex, em, sig, lvlo, lvd, w, z2, C, CE, G, CL_X, CL_E, CL_EU, CL_Z, CL_H, CL_O, CL_OH,
                          CL_L, CLIP, DRAW, HAS_NOISE, NH, HIST_EPS, HAS_LOWP, EPS_TERM, GUIDED, LEARNED)
    if C > 3:
        acc += _step_lane(x_ptr, e_ptr, eu_ptr, z_ptr, h1_ptr, h2_ptr, h3_ptr, o_ptr, oh_ptr, l_ptr, b, c + 3, p, HW, x0x, x0e,
                          cx0, cx, ce, ch1, ch2, ch3, ex, em, sig, lvlo, lvd, w, z3, C, CE, G, CL_X, CL_E, CL_EU, CL_Z, CL_H, CL_O, CL_OH,
                          CL_L, CLIP, DRAW, HAS_NOISE, NH, HIST_EPS, HAS_LOWP, EPS_TERM, GUIDED, LEARNED)
    if CHECK:
        s = tl.sum(acc, axis=0)  # NaN iff some x_s of this program is not finite
        tl.atomic_max(flag_ptr + b, t.to(tl.int64), mask=s != s)


def _step_launch(x, eps_hat, k, table, timesteps, seeds, noise, h, out, out_h, out_lowp, nonfinite, clip, stream, row_is_t, eps_term,
                 eps_uncond=None, hist_eps=False, two_c=False, learned=False):
    L = launch(x)
    eu = eps_uncond if eps_uncond is not None else eps_hat
    z = noise if noise is not None else x
    hh = h if h is not None else x.unsqueeze(0)
    oh = out_h if out_h is not None else hh
    lp = out_lowp if out_lowp is not None else out
    nh = 0 if h is None else h.shape[0]
    _step_kernel[L.grid](
        x, eps_hat, eu, z, hh, out, oh, lp, nonfinite if nonfinite is not None else k, k,
        timesteps if timesteps is not None else k, seeds if seeds is not None else k, table,
        table.shape[0], L.HW, x.numel(), stream,
        CL_X=channels_last(x), CL_E=channels_last(eps_hat), CL_EU=channels_last(eu), CL_Z=channels_last(z), CL_H=channels_last(hh[0]),
        CL_O=channels_last(out), CL_OH=channels_last(oh[0]), CL_L=channels_last(lp),
        CLIP=clip, DRAW=seeds is not None, HAS_NOISE=noise is not None, NH=nh, HIST_EPS=hist_eps and nh > 0,
        HAS_LOWP=out_lowp is not None, CHECK=nonfinite is not None, ROW_IS_T=row_is_t, EPS_TERM=eps_term,
        GUIDED=eps_uncond is not None, LEARNED=learned and (seeds is not None or noise is not None),
        CE=2 * L.C if two_c else L.C, **L.meta(heavy=heavy(nh, seeds is not None, eps_uncond is not None)),
    )


def heavy(nh: int, draw: bool, guided: bool) -> bool:
    """A variant that runs 2 pixels a thread rather than spill (kernels.Launch.meta): history
    read beside drawn noise or a guided pair, or more than one earlier output read."""
    return nh > 1 or (nh > 0 and (draw or guided))


def _step_torch(x, eps_hat, k, table, timesteps, seeds, noise, h, out, out_h, out_lowp, nonfinite, clip, stream, row_is_t, eps_term,
                eps_uncond=None, hist_eps=False, two_c=False, learned=False):
    f = _checks.compute_dtype(x)
    coef = table[k].to(f)  # (B, NCOEF); k was range-checked on the host

    def col(j):
        return coef[:, int(j)].view(-1, 1, 1, 1)

    C = x.shape[1]
    xf, ef = x.to(f), eps_hat[:, :C].to(f)  # two_c: the output's ε̂ half (its v half is read below)
    if eps_uncond is not None:
        eu = eps_uncond[:, :C].to(f)
        ef = eu + col(GUIDE) * (ef - eu)  # classifier-free guidance, as the kernel
    x0 = col(X0_X) * xf - col(X0_EPS) * ef
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    y = col(C_X0) * x0 + col(C_X) * xf
    if eps_term:
        y = y + col(C_EPS) * ef
    if h is not None:  # the ring: slot (k - j) % NH holds what step k - j stored; this step's goes to slot k % NH
        nh = h.shape[0]
        kk = k.long()
        rows = torch.arange(x.shape[0], device=x.device)
        for j, column in enumerate(HISTORY[:nh], start=1):
            y = y + col(column) * h[(kk + nh - j) % nh, rows].to(f)
        u = col(E_X) * xf + col(E_M) * ef if hist_eps else x0
    t = k if row_is_t else timesteps[k]
    if seeds is not None or noise is not None:
        z = noise_torch(noise, seeds, t, stream, x, f)
        if learned:  # σ = exp(½ (f log β' + (1 − f) log β̃)), f = (v + 1)/2, v from the (conditional) output
            frac = (eps_hat[:, C:].to(f) + 1.0) * 0.5
            z = torch.exp(0.5 * col(LV_MIN) + 0.5 * (col(LV_MAX) - col(LV_MIN)) * frac) * z
        y = y + col(SIGMA) * z
    if h is not None:
        target = out_h if out_h is not None else h
        target[kk % target.shape[0], rows] = u.to(target.dtype)
    out.copy_(y)
    if out_lowp is not None:
        out_lowp.copy_(y)
    if nonfinite is not None:
        bad = ~torch.isfinite(y).flatten(1).all(dim=1)
        nonfinite.copy_(torch.where(bad, torch.maximum(nonfinite, t.to(torch.int64)), nonfinite))


@torch.library.custom_op("fastddpm::step_", mutates_args=("out", "h", "out_h", "out_lowp", "nonfinite"))
def _step_op(
    x: torch.Tensor, eps_hat: torch.Tensor, k: torch.Tensor, table: torch.Tensor, timesteps: Optional[torch.Tensor],
    seeds: Optional[torch.Tensor], noise: Optional[torch.Tensor], h: Optional[torch.Tensor],
    out: torch.Tensor, out_h: Optional[torch.Tensor], out_lowp: Optional[torch.Tensor], nonfinite: Optional[torch.Tensor],
    clip: bool, stream: int, row_is_t: bool, eps_term: bool, eps_uncond: Optional[torch.Tensor] = None, hist_eps: bool = False,
    two_c: bool = False, learned: bool = False,
) -> None:
    impl = _step_launch if _checks.use_triton(x) else _step_torch
    impl(x, eps_hat, k, table, timesteps, seeds, noise, h, out, out_h, out_lowp, nonfinite, clip, stream, row_is_t, eps_term,
         eps_uncond, hist_eps, two_c, learned)


@_step_op.register_fake
def _(x, eps_hat, k, table, timesteps, seeds, noise, h, out, out_h, out_lowp, nonfinite, clip, stream, row_is_t, eps_term,
      eps_uncond=None, hist_eps=False, two_c=False, learned=False):
    return None


def _step(*args) -> None:
    """The step on x's device: the Triton kernel through the custom op (opaque to torch.compile, a
    CUDA graph node), or, on CPU tensors, the torch twin called directly: under torch.compile its
    ops are traced, so Inductor fuses the draw and the update into the caller's graph (a compiled
    CPU sampler step is the model plus one more loop), and in eager mode it skips the custom op's
    dispatch (~0.1 ms a call on a CPU, the step's whole budget at batch 1)."""
    if _checks.use_triton(args[0]):
        torch.ops.fastddpm.step_(*args)
    else:
        _step_torch(*args)


def _outputs(x, out, out_lowp):
    if out is None:
        out = torch.empty_like(x)
    else:
        _checks.check_like(out, "out", x, "x")
    if out_lowp is not None:
        _checks.check_like(out_lowp, "out_lowp", x, "x")
    return out


def reverse_step(
    x: torch.Tensor,
    eps_hat: torch.Tensor,
    t: torch.Tensor,
    table: torch.Tensor,
    *,
    seeds=None,
    noise: Optional[torch.Tensor] = None,
    clip: bool = False,
    out: Optional[torch.Tensor] = None,
    out_lowp: Optional[torch.Tensor] = None,
    stream: int = STREAM_REVERSE,
    learned: Optional[bool] = None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} for a batch with one timestep per sample.

    x:        x_t (B, C, H, W); eps_hat: the model's ε̂, same shape, any float dtype/layout, or a
              learned-variance model's whole output (B, 2C, H, W) with learned= (sampler_step).
    t:        (B,) int timesteps in [0, T); table: coef_table(alphas_cumprod, variance).
    seeds:    int or (B,) int64: z drawn in-kernel at (seed, stream, t, c, h, w).
    noise:    explicit z instead of seeds.
    clip:     clamp the predicted x̂_0 to [-1, 1] (Ho et al. eq. 7 on the clipped x̂_0).
    out:      where to write x_{t-1} (x itself for in place); default a new tensor like x.
    out_lowp: optional second output (any float dtype, dense layout) written in the same pass.
    Returns out.
    """
    _checks.check_image(x, "x")
    T = _checks.check_table(table, x, NCOEF)
    two_c, learned = _model_output(eps_hat, "eps_hat", x, learned, table)
    _checks.check_timesteps(t, x.shape[0], T, x.device)
    seeds = _checks.check_noise_source(seeds, noise, x, "x")
    out = _outputs(x, out, out_lowp)
    # coef_table's rows are in the posterior form: no ε column
    _step(x, eps_hat, t, table, None, seeds, noise, None, out, None, out_lowp, None,
          _checks.check_flag(clip, "clip"), _checks.check_stream(stream), True, False, None, False, two_c, learned)
    return out


def sampler_step(
    x: torch.Tensor,
    eps_hat: torch.Tensor,
    k: torch.Tensor,
    table: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    seeds=None,
    noise: Optional[torch.Tensor] = None,
    h: Optional[torch.Tensor] = None,
    clip: bool = False,
    out: Optional[torch.Tensor] = None,
    out_h: Optional[torch.Tensor] = None,
    out_lowp: Optional[torch.Tensor] = None,
    nonfinite: Optional[torch.Tensor] = None,
    eps_term: bool = True,
    stream: int = STREAM_REVERSE,
    eps_uncond: Optional[torch.Tensor] = None,
    basis: str = "x0",
    learned: Optional[bool] = None,
) -> torch.Tensor:
    """One step of any sampler whose update is a row of coefficients (tables.py).

    x, eps_hat: x_t and the model's ε̂ at timesteps[k], (B, C, H, W).
    k:          (B,) int: each sample's row of `table` (rows, NCOEF) float32.
    timesteps:  (rows,) int64: the timestep of each row; z is addressed by (seed, stream, timesteps[k]).
    seeds / noise: z drawn in-kernel, or explicit; with neither, the SIGMA column is ignored
                (a deterministic sampler's table has SIGMA = 0 throughout).
    h:          multistep solvers' history: a ring (NH, B, C, H, W) of NH <= 3 fp32 slots, each
                dense like x; slot (k - j) % NH holds what step k - j stored, weighed by the
                row's C_H<j> column, and this step writes its own to slot k % NH (k is then
                the step index: the ring turns with it, nothing to rotate on the host). A
                (B, C, H, W) tensor is a ring of one slot (the previous step's value).
                Zeros before the first step (the warm-up rows weigh nothing there).
    out_h:      with a one-slot history only: write this step's value here instead of into h.
    basis:      what a step stores: "x0" its x̂_0 (DPM-Solver++, UniPC; clipped when clipping)
                or "eps" its ε̂ = E_X x_t + E_M m (iPNDM, a solver in the noise basis).
    clip:       clamp x̂_0 to [-1, 1].
    out, out_lowp: as reverse_step.
    nonfinite:  optional (B,) int64: nonfinite[b] = max(nonfinite[b], timesteps[k[b]]) where
                x_s of sample b is not finite (start from -1: then it holds the first bad t).
    eps_term:   False when the table's C_EPS column is zero throughout (DDPM, DPM-Solver++):
                the kernel then neither reads the column nor ε̂'s term (fewer registers).
    eps_uncond: classifier-free guidance: the model's unconditional output (eps_hat is then the
                conditional one); the step uses ε̂_u + w (ε̂_c − ε̂_u), w the row's GUIDE column,
                formed in registers (never written). Both halves may be views of one 2B batch.
    learned:    a learned-variance model (Nichol & Dhariwal 2021; OpenAI's learn_sigma): eps_hat
                (and eps_uncond) is then its whole output (B, 2C, H, W), ε̂ in the first C
                channels and v in the last C, read in place (no split, no copy). learned=True:
                the step's σ is SIGMA · exp(½ (f LV_MAX + (1 − f) LV_MIN)), f = (v + 1)/2 per element
                (a table built with variance="learned"); guided, v is the conditional output's
                (GLIDE's and DiT's choice: the guided ε̂ with the conditional model's variance).
                learned=False: the ε̂ half only (a deterministic solver). With C channels: None.
    Returns out.
    """
    _checks.check_image(x, "x")
    rows = _checks.check_table(table, x, NCOEF)
    two_c, learned = _model_output(eps_hat, "eps_hat", x, learned, table)
    B = x.shape[0]
    _checks.check_timesteps(k, B, rows, x.device, name="k")
    if not isinstance(timesteps, torch.Tensor) or timesteps.dtype != torch.int64 or timesteps.shape != (rows,):
        raise ValueError(f"timesteps: expected an int64 tensor of shape ({rows},), one timestep per table row")
    if timesteps.device != x.device:
        raise ValueError(f"timesteps: expected device {x.device}, got {timesteps.device}")
    _checks.check_timestep_values(timesteps, 2**32, "timesteps")  # the noise address and the non-finite flag need t >= 0
    if not _checks.check_flag(eps_term, "eps_term") and _checks.values_checked(table):
        if bool((table[:, int(C_EPS)] != 0).any()):
            raise ValueError("eps_term: False, but this table weighs ε̂ directly (its C_EPS column is not zero, as DDIM's): "
                             "pass eps_term=True (Plan.eps_term says which)")
    if seeds is not None and noise is not None:
        raise ValueError("pass at most one of seeds= (z drawn in-kernel) and noise= (explicit z); got both")
    if seeds is not None:
        seeds = _checks.make_seeds(seeds, B, x.device)
    if noise is not None:
        _checks.check_like(noise, "noise", x, "x")
    if eps_uncond is not None:
        _checks.check_like(eps_uncond, "eps_uncond", eps_hat, "eps_hat")
    if basis not in BASES:
        raise ValueError(f"basis: expected one of {BASES} (what a multistep step stores), got {basis!r}")
    if h is not None:
        h = _ring(h, x, "h")
        if out_h is not None:
            if h.shape[0] != 1:
                raise ValueError(f"out_h: only a one-slot history may be written elsewhere; a ring of {h.shape[0]} turns in place")
            out_h = _ring(out_h, x, "out_h")
    elif out_h is not None:
        raise ValueError("out_h: only a multistep step (h=) writes x̂_0")
    if _checks.values_checked(table):
        used = [j for j, c in enumerate(HISTORY, start=1) if bool((table[:, int(c)] != 0).any())]
        nh = 0 if h is None else h.shape[0]
        if used and max(used) > nh:
            raise ValueError(f"h: this table weighs outputs stored up to {max(used)} steps earlier (its C_H{max(used)} column "
                             f"is not zero), so it needs a history ring of {max(used)} slots, ({max(used)}, B, C, H, W); got "
                             f"{'no history' if h is None else f'{nh} slot(s)'} (Plan.history says how many)")
    if nonfinite is not None and (not isinstance(nonfinite, torch.Tensor) or nonfinite.dtype != torch.int64
                                  or nonfinite.shape != (B,) or nonfinite.device != x.device):
        raise ValueError(f"nonfinite: expected an int64 tensor of shape ({B},) on {x.device}")
    out = _outputs(x, out, out_lowp)
    _step(x, eps_hat, k, table, timesteps, seeds, noise, h, out, out_h, out_lowp, nonfinite,
          _checks.check_flag(clip, "clip"), _checks.check_stream(stream), False, _checks.check_flag(eps_term, "eps_term"),
          eps_uncond, basis == "eps", two_c, learned)
    return out


BASES = ("x0", "eps")


def _model_output(eps_hat, name: str, x: torch.Tensor, learned, table: torch.Tensor) -> tuple:
    """(two_c, learned): whether eps_hat is a (B, 2C, H, W) learned-variance output, and whether
    the step reads its v; a clear error where the output, the flag and the table disagree."""
    if learned is not None and not isinstance(learned, bool):
        raise TypeError(f"learned: expected None, True or False, got {learned!r}")
    B, C, H, W = x.shape
    if isinstance(eps_hat, torch.Tensor) and eps_hat.dim() == 4 and tuple(eps_hat.shape) == (B, 2 * C, H, W):
        if learned is None:
            raise ValueError(f"{name}: has {2 * C} channels, twice x's: a learned-variance model's output (ε̂, then v); pass "
                             f"learned=True to sample with its variance, or learned=False to use its ε̂ half alone")
        _checks.check_image(eps_hat, name)
        if eps_hat.device != x.device:
            raise ValueError(f"{name}: expected device {x.device} (that of x), got {eps_hat.device}")
        two_c = True
    else:
        _checks.check_like(eps_hat, name, x, "x")
        if learned:
            raise ValueError(f"learned: True, but {name} has {C} channels, those of x; a learned-variance model's output "
                             f"has {2 * C} (ε̂, then v)")
        two_c, learned = False, False
    if _checks.values_checked(table):
        lv = table[:, int(LV_MIN)] != 0
        lv |= table[:, int(LV_MAX)] != 0
        noisy = table[:, int(SIGMA)] > 0
        if learned and bool((noisy & ~lv).any()):
            raise ValueError("learned: True, but this table's noisy rows have no learned-range columns (LV_MIN, LV_MAX): "
                             "build it with variance='learned'")
        if not learned and bool((noisy & lv).any()):
            raise ValueError("learned: this table is a learned-variance one (variance='learned': its σ comes from the "
                             "model's v), so pass the model's whole output with learned=True")
    return two_c, learned


def _ring(h, x: torch.Tensor, name: str) -> torch.Tensor:
    """A history ring (NH, B, C, H, W), NH in 1..3, each slot dense like x and the slots one
    slot's size apart; a (B, C, H, W) tensor is taken as a ring of one slot."""
    if isinstance(h, torch.Tensor) and h.dim() == 4:
        _checks.check_like(h, name, x, "x")
        return h.unsqueeze(0)
    if not isinstance(h, torch.Tensor) or h.dim() != 5 or not 1 <= h.shape[0] <= len(HISTORY) or h.shape[1:] != x.shape:
        raise ValueError(f"{name}: expected a history ring of shape (NH, {', '.join(map(str, x.shape))}) with NH in 1..{len(HISTORY)} "
                         f"(or one slot, shaped like x), got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    for j in range(h.shape[0]):
        _checks.check_like(h[j], f"{name}[{j}]", x, "x")
    if h.shape[0] > 1 and h.stride(0) != x.numel():
        raise ValueError(f"{name}: expected its slots one slot ({x.numel()} elements) apart, as torch.zeros((NH, *x.shape)) "
                         f"lays them out; got a stride of {h.stride(0)}")
    return h
