"""The diffusion loss, forward and backward, regenerating ε from its address.

    loss_b = w_{t_b} · mean_{c,h,w} (m - y)²        per sample (docs/notation.md)
    ∂loss_b/∂m = 2 w_{t_b} (m - y) / (C H W)

m is the model's output and y its target: ε (ε-prediction), v = ᾱ_t ε − β̄_t x_0 (Salimans &
Ho 2022; ᾱ_t, β̄_t read from row t of the coefficient table) or x_0 ("sample"), built in
the kernel. ε is never stored: both passes redraw it from (seed, STREAM_NOISING, t, c, h, w),
the address q_sample used; an x_0 target draws nothing. (The CPU twin draws it once and keeps
m - y for the backward: on a CPU the draw costs more than reading N floats back.) Forward reads
N (+N of x_0 for the v and x_0 targets) and writes one fp32 partial sum per program (summed in
a fixed order, so the loss is bitwise reproducible, no atomics); backward reads the same and writes N. The
eager reference keeps ε alive from the noising step, builds the target and reads it twice.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _checks
from ._cast import to_storage
from ._tile import at, channels_last, lane_mask, launch, noise4, row_index, tile
from .philox import STREAM_NOISING, noise_torch
from .tables import NCOEF, PREDICTIONS, SQRT_1M_AB, SQRT_AB, prediction_name


@triton.jit
def _diff_lane(e_ptr, n_ptr, x0_ptr, b, c, p, HW, n, ca, cb, m,
               C: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, CL_X0: tl.constexpr, HAS_NOISE: tl.constexpr,
               PRED: tl.constexpr):
    """m - y at one channel's lanes: y = ε (PRED 0), ca ε - cb x_0 (1: v), x_0 (2)."""
    e = tl.load(at(e_ptr, b, c, p, HW, C, CL_E), mask=m).to(tl.float32)
    if PRED != 2:
        if HAS_NOISE:
            n = tl.load(at(n_ptr, b, c, p, HW, C, CL_N), mask=m).to(tl.float32)
    if PRED != 0:
        x0 = tl.load(at(x0_ptr, b, c, p, HW, C, CL_X0), mask=m).to(tl.float32)
    if PRED == 0:
        y = n
    elif PRED == 1:
        y = ca * n - cb * x0  # v = ᾱ_t ε − β̄_t x_0 (Salimans & Ho 2022)
    else:
        y = x0
    return e - y


@triton.jit
def _sq_lane(e_ptr, n_ptr, x0_ptr, b, c, p, HW, n, ca, cb,
             C: tl.constexpr, G: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, CL_X0: tl.constexpr,
             HAS_NOISE: tl.constexpr, PRED: tl.constexpr):
    m = lane_mask(p, HW, c, C, G)  # pixel in the image and channel c exists
    d = tl.where(m, _diff_lane(e_ptr, n_ptr, x0_ptr, b, c, p, HW, n, ca, cb, m, C, CL_E, CL_N, CL_X0, HAS_NOISE, PRED), 0.0)
    return d * d


@triton.jit
def _grad_lane(e_ptr, n_ptr, x0_ptr, g_ptr, b, c, p, HW, k, n, ca, cb,
               C: tl.constexpr, G: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, CL_X0: tl.constexpr,
               CL_G: tl.constexpr, HAS_NOISE: tl.constexpr, PRED: tl.constexpr):
    m = lane_mask(p, HW, c, C, G)
    d = _diff_lane(e_ptr, n_ptr, x0_ptr, b, c, p, HW, n, ca, cb, m, C, CL_E, CL_N, CL_X0, HAS_NOISE, PRED)
    tl.store(at(g_ptr, b, c, p, HW, C, CL_G), to_storage(k * d, g_ptr.dtype.element_ty), mask=m)


@triton.jit
def _loss_kernel(
    e_ptr,  # (B, C, H, W) m, the model's output
    n_ptr,  # (B, C, H, W) explicit ε, read only if HAS_NOISE
    x0_ptr,  # (B, C, H, W) x_0, read only for the v and x_0 targets (PRED 1, 2)
    g_ptr,  # BACKWARD: (B, C, H, W) ∂L/∂m written; forward: unused
    part_ptr,  # forward: (B * G * TILES,) fp32 partial sums; BACKWARD: (B,) fp32 ∂L/∂loss_b
    t_ptr,  # (B,) timestep per sample
    seed_ptr,  # (B,) int64 key per sample, read only if ε is drawn
    w_ptr,  # (T,) fp32 per-timestep weights, read only if HAS_W
    tab_ptr,  # (TROWS, NCOEF) fp32 coefficient table, read only for the v target (PRED 1)
    T, TROWS, HW, stream, inv_n,  # inv_n = 1 / (C H W)
    C: tl.constexpr, G: tl.constexpr, TILES: tl.constexpr, CL_E: tl.constexpr, CL_N: tl.constexpr, CL_X0: tl.constexpr,
    CL_G: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_W: tl.constexpr, BACKWARD: tl.constexpr, PRED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, b, g, p = tile(TILES, G, BLOCK)
    t = tl.load(t_ptr + b)
    if HAS_W:
        k, bad = row_index(t, T)
        w = tl.load(w_ptr + k) + bad  # the weight of this sample's timestep
    else:
        w = 1.0
    if PRED == 1:
        r, bad_r = row_index(t, TROWS)
        ca = tl.load(tab_ptr + r * NCOEF + SQRT_AB) + bad_r  # ᾱ_t
        cb = tl.load(tab_ptr + r * NCOEF + SQRT_1M_AB) + bad_r  # β̄_t
    else:
        ca = 1.0
        cb = 0.0
    n0, n1, n2, n3 = noise4(seed_ptr, b, p, g, t, stream, (not HAS_NOISE) and PRED != 2, BLOCK)
    c = 4 * g
    if BACKWARD:
        k = 2.0 * w * inv_n * tl.load(part_ptr + b)
        _grad_lane(e_ptr, n_ptr, x0_ptr, g_ptr, b, c, p, HW, k, n0, ca, cb, C, G, CL_E, CL_N, CL_X0, CL_G, HAS_NOISE, PRED)
        if C > 1:
            _grad_lane(e_ptr, n_ptr, x0_ptr, g_ptr, b, c + 1, p, HW, k, n1, ca, cb, C, G, CL_E, CL_N, CL_X0, CL_G, HAS_NOISE, PRED)
        if C > 2:
            _grad_lane(e_ptr, n_ptr, x0_ptr, g_ptr, b, c + 2, p, HW, k, n2, ca, cb, C, G, CL_E, CL_N, CL_X0, CL_G, HAS_NOISE, PRED)
        if C > 3:
            _grad_lane(e_ptr, n_ptr, x0_ptr, g_ptr, b, c + 3, p, HW, k, n3, ca, cb, C, G, CL_E, CL_N, CL_X0, CL_G, HAS_NOISE, PRED)
    else:
        acc = _sq_lane(e_ptr, n_ptr, x0_ptr, b, c, p, HW, n0, ca, cb, C, G, CL_E, CL_N, CL_X0, HAS_NOISE, PRED)
        if C > 1:
            acc += _sq_lane(e_ptr, n_ptr, x0_ptr, b, c + 1, p, HW, n1, ca, cb, C, G, CL_E, CL_N, CL_X0, HAS_NOISE, PRED)
        if C > 2:
            acc += _sq_lane(e_ptr, n_ptr, x0_ptr, b, c + 2, p, HW, n2, ca, cb, C, G, CL_E, CL_N, CL_X0, HAS_NOISE, PRED)
        if C > 3:
            acc += _sq_lane(e_ptr, n_ptr, x0_ptr, b, c + 3, p, HW, n3, ca, cb, C, G, CL_E, CL_N, CL_X0, HAS_NOISE, PRED)
        tl.store(part_ptr + pid, tl.sum(acc, axis=0) * w * inv_n)


def _loss_launch(eps_hat, t, seeds, noise, weights, stream, pred, x0, table, grad_in=None, grad_out=None):
    """Forward when grad_in is None: returns per-sample losses (B,) fp32.
    Backward otherwise: writes ∂L/∂m into grad_out given grad_in = ∂L/∂loss_b (B,)."""
    L = launch(eps_hat)
    has_noise, has_w = noise is not None, weights is not None
    backward = grad_in is not None
    n = noise if has_noise else eps_hat
    x = x0 if x0 is not None else eps_hat
    part = grad_in if backward else torch.empty(L.grid[0], device=eps_hat.device, dtype=torch.float32)
    g = grad_out if backward else eps_hat
    _loss_kernel[L.grid](
        eps_hat, n, x, g, part, t, t if has_noise or seeds is None else seeds, weights if has_w else part,
        table if table is not None else part,
        weights.shape[0] if has_w else 0, table.shape[0] if table is not None else 0, L.HW, stream, 1.0 / (L.C * L.HW),
        CL_E=channels_last(eps_hat), CL_N=channels_last(n), CL_X0=channels_last(x), CL_G=channels_last(g),
        HAS_NOISE=has_noise, HAS_W=has_w, BACKWARD=backward, PRED=pred, **L.meta(),
    )
    return None if backward else part.view(L.B, L.G * L.tiles).sum(dim=1)


def _v_coefs(table, t, f):
    """(ᾱ_t, β̄_t) per sample, (B, 1, 1, 1) in dtype f, from row t of the table; an out-of-range t
    gives NaN, as the kernel's row_index."""
    ok = (t >= 0) & (t < table.shape[0])
    row = table[t.long().clamp(0, table.shape[0] - 1)].to(f) + torch.where(ok, 0.0, float("nan")).to(f).view(-1, 1)
    return row[:, int(SQRT_AB)].view(-1, 1, 1, 1), row[:, int(SQRT_1M_AB)].view(-1, 1, 1, 1)


def _target_torch(eps_hat, t, seeds, noise, stream, pred, x0, table, f):
    """The target y in the compute dtype f: ε, ᾱ_t ε − β̄_t x_0, or x_0."""
    if pred == 2:
        return x0.to(f)
    eps = noise_torch(noise, seeds, t, stream, eps_hat, f)
    if pred == 0:
        return eps
    ca, cb = _v_coefs(table, t, f)
    return ca * eps - cb * x0.to(f)


def _noise_grad(g, pred, t, table):
    """∂L/∂ε of an explicit noise from g = ∂L/∂m: the target holds ε with weight 1 (ε) or ᾱ_t (v)."""
    if pred == 0:
        return -g
    ca, _ = _v_coefs(table, t, torch.float64 if g.dtype == torch.float64 else torch.float32)
    return -(ca * g)  # in fp32 (fp64), cast to the noise's dtype by autograd


def _residual(eps_hat, t, seeds, noise, stream, pred, x0, table):
    """m - y in the compute dtype (fp32; fp64 for fp64 input)."""
    f = _checks.compute_dtype(eps_hat)
    return eps_hat.to(f) - _target_torch(eps_hat, t, seeds, noise, stream, pred, x0, table, f)


def _weight(weights, t, d):
    """w_t per sample in d's dtype, or None without weights."""
    return weights[t].to(d.dtype) if weights is not None else None


def _per_sample(d, w):
    """loss_b = w_t mean_{c,h,w} d²."""
    loss = (d * d).mean(dim=(1, 2, 3))
    return loss * w if w is not None else loss


def _grad_of(grad_in, d, w):
    """∂L/∂m = 2 w_t (m - y) / (C H W) ∂L/∂loss_b, in d's dtype."""
    k = grad_in.to(d.dtype) * (2.0 / d[0].numel())
    if w is not None:
        k = k * w
    return k.view(-1, 1, 1, 1) * d


def _loss_torch(eps_hat, t, seeds, noise, weights, stream, pred, x0, table):
    d = _residual(eps_hat, t, seeds, noise, stream, pred, x0, table)
    return _per_sample(d, _weight(weights, t, d))


def _loss_backward_torch(grad_in, eps_hat, t, seeds, noise, weights, stream, pred, x0, table, grad_out):
    d = _residual(eps_hat, t, seeds, noise, stream, pred, x0, table)
    grad_out.copy_(_grad_of(grad_in, d, _weight(weights, t, d)))


class _LossTwin(torch.autograd.Function):
    """The loss on CPU tensors: the torch twin, keeping m - y for the backward instead of drawing ε a
    second time (on a CPU the draw costs more than reading N floats back; the CUDA kernel redraws).
    The same values and gradients as the custom op (an explicit noise gets its gradient too), the
    gradient in eps_hat's dtype and layout; traced into the caller's graph by torch.compile."""

    @staticmethod
    def forward(ctx, eps_hat, t, seeds, noise, weights, stream, pred, x0, table):
        d = _residual(eps_hat, t, seeds, noise, stream, pred, x0, table)
        w = _weight(weights, t, d)
        ctx.save_for_backward(d, w, t, table)
        ctx.pred = pred
        ctx.noise_grad = noise is not None and pred != 2
        ctx.dtype = eps_hat.dtype  # the gradient's dtype and layout (check_image: NCHW or NHWC)
        ctx.format = torch.contiguous_format if eps_hat.is_contiguous() else torch.channels_last
        return _per_sample(d, w)

    @staticmethod
    def backward(ctx, grad):
        d, w, t, table = ctx.saved_tensors
        g = torch.empty(d.shape, dtype=ctx.dtype, device=d.device, memory_format=ctx.format)
        g.copy_(_grad_of(grad, d, w))
        g_noise = _noise_grad(g, ctx.pred, t, table) if ctx.noise_grad and ctx.needs_input_grad[3] else None
        return g, None, None, g_noise, None, None, None, None, None


@torch.library.custom_op("fastddpm::diffusion_loss", mutates_args=())
def _loss_op(
    eps_hat: torch.Tensor, t: torch.Tensor, seeds: Optional[torch.Tensor], noise: Optional[torch.Tensor],
    weights: Optional[torch.Tensor], stream: int, pred: int, x0: Optional[torch.Tensor], table: Optional[torch.Tensor],
) -> torch.Tensor:
    if _checks.use_triton(eps_hat):
        return _loss_launch(eps_hat, t, seeds, noise, weights, stream, pred, x0, table)
    return _loss_torch(eps_hat, t, seeds, noise, weights, stream, pred, x0, table)


@_loss_op.register_fake
def _(eps_hat, t, seeds, noise, weights, stream, pred, x0, table):
    return eps_hat.new_empty(eps_hat.shape[0], dtype=_checks.compute_dtype(eps_hat))


@torch.library.custom_op("fastddpm::diffusion_loss_backward", mutates_args=())
def _loss_backward_op(
    grad_in: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, seeds: Optional[torch.Tensor],
    noise: Optional[torch.Tensor], weights: Optional[torch.Tensor], stream: int, pred: int, x0: Optional[torch.Tensor],
    table: Optional[torch.Tensor],
) -> torch.Tensor:
    grad_out = torch.empty_like(eps_hat)
    if _checks.use_triton(eps_hat):
        grad_in = grad_in.to(torch.float32).contiguous()  # (B,): tiny
        _loss_launch(eps_hat, t, seeds, noise, weights, stream, pred, x0, table, grad_in, grad_out)
    else:
        _loss_backward_torch(grad_in, eps_hat, t, seeds, noise, weights, stream, pred, x0, table, grad_out)
    return grad_out


@_loss_backward_op.register_fake
def _(grad_in, eps_hat, t, seeds, noise, weights, stream, pred, x0, table):
    return torch.empty_like(eps_hat)


def _loss_setup(ctx, inputs, output):
    eps_hat, t, seeds, noise, weights, stream, pred, x0, table = inputs
    ctx.save_for_backward(eps_hat, t, seeds, noise, weights, x0, table)
    ctx.stream, ctx.pred = stream, pred


def _loss_backward(ctx, grad):
    eps_hat, t, seeds, noise, weights, x0, table = ctx.saved_tensors
    g = torch.ops.fastddpm.diffusion_loss_backward(grad, eps_hat, t, seeds, noise, weights, ctx.stream, ctx.pred, x0, table)
    g_noise = _noise_grad(g, ctx.pred, t, table) if (noise is not None and ctx.needs_input_grad[3] and ctx.pred != 2) else None
    return g, None, None, g_noise, None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


def eps_mse_loss(
    eps_hat: torch.Tensor,
    t: torch.Tensor,
    *,
    seeds=None,
    noise: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    stream: int = STREAM_NOISING,
    prediction: str = "epsilon",
    x0: Optional[torch.Tensor] = None,
    table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """‖y - m‖² averaged over (C, H, W), times w_t, then reduced over the batch; y the target
    of what the model predicts: ε (default), v = ᾱ_t ε − β̄_t x_0, or x_0.

    eps_hat:    (B, C, H, W) the model's output m; gradients flow to it (loss.backward()).
    t:          (B,) int timesteps, the ones q_sample used.
    seeds:      the seeds q_sample used: ε is regenerated in-kernel, never stored.
    noise:      explicit ε instead (then, for ε, this is F.mse_loss(eps_hat, noise) per sample).
    weights:    optional (T,) float32 per-timestep weights w_t on eps_hat's device
                (min-SNR-γ: `min_snr_weights`).
    prediction: "epsilon", "v" (diffusers' "v_prediction") or "sample" (x_0).
    x0:         (B, C, H, W) the clean images q_sample noised: the v and x_0 targets read them
                (no gradient flows to x0: it is data). A diffusers loop's
                `noise_scheduler.get_velocity(x0, noise, t)` target is built in the kernel instead.
    table:      the v target's (T, NCOEF) float32 coefficient table (`coef_table(alphas_cumprod)`),
                whose row t gives ᾱ_t and β̄_t.
    reduction:  "mean" (a scalar, = F.mse_loss when unweighted), "sum", or "none" (B,).
    The loss is float32 whatever eps_hat's dtype (float64 for float64 input on the CPU).
    """
    _checks.check_image(eps_hat, "eps_hat")
    pred = PREDICTIONS.index(prediction_name(prediction))
    if pred == 0 and (x0 is not None or table is not None):
        raise ValueError("x0, table: an ε target reads neither; pass them for prediction='v' or 'sample' only")
    if pred != 0:
        if not isinstance(x0, torch.Tensor):
            raise ValueError(f"x0: prediction={prediction!r} needs the clean images x0 (the target is built from them)")
        _checks.check_image(x0, "x0")
        if x0.shape != eps_hat.shape or x0.device != eps_hat.device:
            raise ValueError(f"x0: expected shape {tuple(eps_hat.shape)} on {eps_hat.device}, got {tuple(x0.shape)} on {x0.device}")
        x0 = x0.detach()
    if pred == 1:
        if not isinstance(table, torch.Tensor):
            raise ValueError("table: prediction='v' needs the (T, NCOEF) coefficient table (coef_table(alphas_cumprod))")
        _checks.check_table(table, eps_hat, NCOEF)
    elif table is not None:
        raise ValueError("table: only the v target reads a coefficient table")
    B = eps_hat.shape[0]
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"weights: expected a float32 tensor (T,), got {type(weights).__name__}")
        if weights.dim() != 1 or weights.dtype != torch.float32 or not weights.is_contiguous():
            raise ValueError(
                f"weights: expected a contiguous 1-D float32 tensor (T,) of per-timestep weights, "
                f"got {weights.dtype} of shape {tuple(weights.shape)}"
            )
        if weights.device != eps_hat.device:
            raise ValueError(f"weights: expected device {eps_hat.device}, got {weights.device}")
        T = weights.shape[0]
    else:
        T = 2**32  # without weights t is only part of ε's address
    _checks.check_timesteps(t, B, T, eps_hat.device)
    if pred == 2:  # x_0 target: no ε at all (seeds, which a trainer passes for every target, are not read)
        if noise is not None:
            raise ValueError("noise: an x_0 target has no ε in it; pass seeds (unused) or nothing")
        seeds = None
    else:
        seeds = _checks.check_noise_source(seeds, noise, eps_hat, "eps_hat")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    stream = _checks.check_stream(stream)
    if _checks.use_triton(eps_hat):
        per_sample = torch.ops.fastddpm.diffusion_loss(eps_hat, t, seeds, noise, weights, stream, pred, x0, table)
    else:
        # CPU tensors: the torch twin without the custom op's dispatch; traced under torch.compile
        per_sample = _LossTwin.apply(eps_hat, t, seeds, noise, weights, stream, pred, x0, table)
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample
