"""Coefficient tables the kernels read: one float32 row per step, built once in float64.

The kernels take schedule knowledge as one (rows, NCOEF) table, so any trainer with its own
schedule can use them: `coef_table(scheduler.alphas_cumprod)` is all a diffusers user needs.
Every reverse step, of every sampler, is one row of the same columns (docs/notation.md):

    x̂_0 = X0_X · x_t − X0_EPS · m                  (clamped to [-1, 1] when clipping)
    x_s = C_X0 · x̂_0 + C_X · x_t + C_EPS · m + C_H1 · h_1 + C_H2 · h_2 + C_H3 · h_3 + SIGMA · z
    (a learned-variance step: SIGMA · exp(½(f LV_MAX + (1 − f) LV_MIN)) · z, f = (v + 1)/2 per element)

with m the model's output and h_j the value the step j steps earlier stored (multistep solvers:
its x̂_0, or, for solvers in the noise basis, its ε̂ = E_X · x_t + E_M · m); a guided step
reads the conditional and unconditional outputs and takes m = m_u + GUIDE · (m_c − m_u). For an
ε-prediction model m = ε̂; a v- or x₀-prediction model gets other rows for the same kernel
(`for_prediction`): x̂_0 and ε̂ are linear in (x_t, m) for all three. The columns are constexprs, read by the
kernels as they are and by host code as int(column) (torch indexing wants a plain int). In the seed notation ᾱ_t² = alphas_cumprod[t].
"""

import math

import torch
import triton.language as tl

from ._checks import check_device

SQRT_AB = tl.constexpr(0)  # ᾱ_t                  forward noising: x_t = ᾱ_t x_0 + β̄_t ε
SQRT_1M_AB = tl.constexpr(1)  # β̄_t
X0_X = tl.constexpr(2)  # 1 / ᾱ_t              predicted x_0 from x_t ...
X0_EPS = tl.constexpr(3)  # β̄_t / ᾱ_t           ... and from ε̂
C_X0 = tl.constexpr(4)  # weight of x̂_0 in x_s
C_X = tl.constexpr(5)  # weight of x_t
C_EPS = tl.constexpr(6)  # weight of ε̂
C_H1 = tl.constexpr(7)  # weight of h_1, what the previous step stored (its x̂_0, or its ε̂)
C_H = C_H1  # (the name from when a step kept one earlier x̂_0)
SIGMA = tl.constexpr(8)  # weight of z, the step's noise
GUIDE = tl.constexpr(9)  # w, classifier-free guidance: m = m_u + w (m_c - m_u) (1: the conditional output alone)
C_H2 = tl.constexpr(10)  # weight of h_2, stored two steps earlier
C_H3 = tl.constexpr(11)  # weight of h_3, stored three steps earlier
E_X = tl.constexpr(12)  # ε̂ = E_X x_t + E_M m: what a noise-basis solver (iPNDM) stores
E_M = tl.constexpr(13)
LV_MIN = tl.constexpr(14)  # learned-range variance (Nichol & Dhariwal): log σ² = f LV_MAX + (1 − f) LV_MIN per element,
LV_MAX = tl.constexpr(15)  # f = (v + 1)/2 from the model's variance half; LV_MIN = log β̃ (posterior), LV_MAX = log β'
NCOEF = tl.constexpr(16)  # host code: int(NCOEF)
HISTORY = (C_H1, C_H2, C_H3)  # the weights of h_1, h_2, h_3: at most three earlier outputs

VARIANCES = ("large", "small", "none", "learned")  # learned: the model's learned range (its output's second half)
PREDICTIONS = ("epsilon", "v", "sample")  # what the model predicts: ε, v = √a ε − √(1−a) x_0 (Salimans & Ho), x_0
PREDICTION_SYNONYMS = {"v_prediction": "v"}  # diffusers' prediction_type values


def prediction_name(prediction) -> str:
    """'epsilon', 'v' or 'sample' (diffusers' 'v_prediction' accepted), else a ValueError."""
    name = PREDICTION_SYNONYMS.get(prediction, prediction) if isinstance(prediction, str) else None
    if name not in PREDICTIONS:
        raise ValueError(f"prediction: expected one of {PREDICTIONS} (or diffusers' 'v_prediction'), got {prediction!r}")
    return name


def for_prediction(rows: torch.Tensor, prediction: str) -> torch.Tensor:
    """Rows written for ε̂ rewritten for a model that predicts `prediction`, float64.

    With a = ᾱ_t = SQRT_AB and b = β̄_t = SQRT_1M_AB of each row, and m the model's output:
        epsilon   x̂_0 = (x − b m)/a      ε̂ = m
        v         x̂_0 = a x − b m        ε̂ = b x + a m          (Salimans & Ho 2022, eq. 17 and App. D)
        sample    x̂_0 = m                ε̂ = (x − a m)/b
    The ε̂ weight C_EPS is spread over x_t and m; the x̂_0 columns are replaced, so clipping
    x̂_0 (and ε re-derived from the clipped x̂_0, already folded into C_X0/C_X) stays exact.
    E_X, E_M are set to ε̂'s own weights (ε̂ = E_X x + E_M m), which a noise-basis solver stores.
    """
    prediction = prediction_name(prediction)
    if not isinstance(rows, torch.Tensor) or not rows.is_floating_point() or rows.dim() != 2 or rows.shape[1] != NCOEF:
        raise TypeError(f"rows: expected a floating-point tensor (K, {int(NCOEF)}) of coefficient rows, got "
                        f"{rows.dtype if isinstance(rows, torch.Tensor) else type(rows).__name__} "
                        f"{tuple(rows.shape) if isinstance(rows, torch.Tensor) else ''}")
    rows = rows.to(torch.float64).clone()
    a, b = rows[:, int(SQRT_AB)], rows[:, int(SQRT_1M_AB)]
    if prediction == "epsilon":
        rows[:, int(E_X)], rows[:, int(E_M)] = 0.0, 1.0
        return rows
    if prediction == "v":
        x0x, x0m, ex, em = a, b, b, a
    else:
        x0x, x0m, ex, em = torch.zeros_like(a), -torch.ones_like(a), 1 / b, -a / b
    out = rows.clone()
    out[:, int(X0_X)], out[:, int(X0_EPS)] = x0x, x0m
    ce = rows[:, int(C_EPS)]
    out[:, int(C_X)] = rows[:, int(C_X)] + torch.where(ce != 0, ce * ex, torch.zeros_like(ce))
    out[:, int(C_EPS)] = ce * em
    out[:, int(E_X)], out[:, int(E_M)] = ex, em  # ε̂ itself, for a solver that stores it
    return out


def min_snr_weights(alphas_cumprod, gamma: float = 5.0, prediction: str = "epsilon", device=None) -> torch.Tensor:
    """Min-SNR-γ loss weights per timestep (Hang et al. 2023), float32 (T,), for the loss's weights=.

    With SNR_t = ᾱ_t²/β̄_t² the weight on the MSE of each target is the same weight on x_0's
    error: min(SNR, γ)/SNR for ε, min(SNR, γ) for x_0, min(SNR, γ)/(SNR + 1) for v (as diffusers'
    training scripts' compute_snr). At ᾱ = 0 (zero terminal SNR) the v weight is 0 and the ε
    weight undefined (an ε model cannot train there): a ValueError.
    """
    prediction = prediction_name(prediction)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma: expected a finite number > 0 (5 is the paper's), got {gamma!r}")
    if device is not None:
        device = check_device(device)
    ac = check_alphas_cumprod(alphas_cumprod)
    snr = ac / (1 - ac)
    clipped = snr.clamp(max=float(gamma))
    if prediction == "epsilon":
        if bool((snr == 0).any()):
            raise ValueError("prediction: min-SNR weights for an ε target are undefined where ᾱ = 0 (zero terminal SNR); "
                             "train a v model there")
        w = clipped / snr
    elif prediction == "sample":
        w = clipped
    else:
        w = clipped / (snr + 1)
    return w.to(device=device, dtype=torch.float32).contiguous()


def check_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """ᾱ_t² (diffusers' `alphas_cumprod`) as a float64 CPU tensor, validated."""
    ac = torch.as_tensor(alphas_cumprod).detach().to("cpu")
    if ac.is_complex() or not ac.is_floating_point():
        raise TypeError(f"alphas_cumprod: expected a real floating-point tensor, got {ac.dtype}")
    ac = ac.to(torch.float64)
    if ac.dim() != 1 or ac.numel() < 1:
        raise ValueError(f"alphas_cumprod: expected a 1-D tensor of length T >= 1, got shape {tuple(ac.shape)}")
    if not bool(torch.isfinite(ac).all()) or not bool(((ac > 0) & (ac < 1)).all()):
        # zero terminal SNR (Lin et al. 2024): ᾱ = 0 at the last step only
        if not (bool(((ac[:-1] > 0) & (ac[:-1] < 1)).all()) and float(ac[-1]) == 0.0 and ac.numel() > 1):
            raise ValueError("alphas_cumprod: expected every value in (0, 1) (0 allowed at the last step: zero terminal SNR)")
    if ac.numel() > 1 and not bool((ac[1:] <= ac[:-1]).all()):
        raise ValueError("alphas_cumprod: expected a non-increasing sequence")
    return ac


def _int_steps(v, name: str) -> torch.Tensor:
    """Integer timesteps as an int64 CPU tensor; floats, even whole ones, are refused (a rounding is a choice)."""
    try:
        v = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected integer timesteps, got {type(v).__name__}") from None
    if v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer timesteps, got dtype {v.dtype}")
    return v.to("cpu", torch.int64)


def coef_table(alphas_cumprod, variance: str = "large", device=None, *, t=None, prev=None,
               dtype: torch.dtype = torch.float32, prediction: str = "epsilon") -> torch.Tensor:
    """Rows of the DDPM posterior step t -> prev (Ho et al. eq. 6-7), (len(t), NCOEF).

    alphas_cumprod: ᾱ_t² for t in [0, T) (diffusers' `alphas_cumprod`).
    t, prev:  the steps' timesteps and the ones they step to; default the whole ancestral
              chain, t = 0 .. T-1 and prev = t - 1, so row t is the step from t. prev = -1
              is the end (ᾱ_{-1} = 1). With a_t = ᾱ_t², a_s = ᾱ_prev², β' = 1 - a_t / a_s
              (the respaced chain of Nichol & Dhariwal; β' = β_t² when prev = t - 1):
    variance: "large" σ = √β' (diffusers fixed_large), "small" σ = √(β'(1 - a_s)/(1 - a_t))
              (the posterior; fixed_small), "none" σ = 0, "learned" the model's learned range
              (Nichol & Dhariwal 2021; OpenAI's LEARNED_RANGE, diffusers' learned_range): SIGMA = 1
              and LV_MAX = log β', LV_MIN = log β̃ = log(β'(1 - a_s)/(1 - a_t)), the step reading
              f = (v + 1)/2 from the model's variance half; a step to the end takes LV_MIN of the
              step that lands on its t (OpenAI's clipped log β̃_0 = log β̃_1), or log β' where the
              table has none. A step to the end has σ = 0 whatever the variance: the last step
              adds no noise, by table, not by branch.
    prediction: what the model predicts, "epsilon" (default), "v" or "sample" (for_prediction).
    The mean is written in the posterior form C_X0 x̂_0 + C_X x_t, which with an unclipped
    x̂_0 is the same function as Ho et al. eq. 11 and with a clipped one is eq. 7 on it.
    With zero terminal SNR (ᾱ = 0 at the last step) an ε row there has infinite x̂_0
    columns: such a step needs a v or x₀ model.
    """
    prediction = prediction_name(prediction)
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected torch.float32 (the kernels' table) or torch.float64, got {dtype!r}")
    if device is not None:
        device = check_device(device)
    ac = check_alphas_cumprod(alphas_cumprod)
    T = ac.numel()
    t = torch.arange(T) if t is None else _int_steps(t, "t")
    prev = t - 1 if prev is None else _int_steps(prev, "prev")
    if t.dim() != 1 or prev.shape != t.shape:
        raise ValueError(f"t, prev: expected two 1-D timestep tensors of one length, got {tuple(t.shape)} and {tuple(prev.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"t: expected timesteps in [0, {T}), got [{int(t.min())}, {int(t.max())}]")
    if bool(((prev < -1) | (prev >= t)).any()):
        raise ValueError("prev: expected each previous timestep in [-1, t)")
    a_t = ac[t]
    a_s = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.ones_like(a_t))  # a_{-1} = 1
    beta = 1.0 - a_t / a_s  # β'
    if variance == "large":
        var = beta.clone()
    elif variance in ("small", "learned"):
        var = beta * (1.0 - a_s) / (1.0 - a_t)
    else:
        var = torch.zeros_like(beta)
    rows = torch.zeros(t.numel(), int(NCOEF), dtype=torch.float64)
    if variance == "learned":  # OpenAI's log β' and clipped log β̃; σ = 1 · exp(½ log σ²), 0 at the end
        log_small = var.clamp(min=1e-300).log()
        for i in torch.nonzero(prev < 0).flatten().tolist():  # β̃ = 0 there: the value of the step landing on t
            lands = torch.nonzero(prev == t[i]).flatten()
            log_small[i] = log_small[int(lands[0])] if lands.numel() else beta[i].log()
        rows[:, int(LV_MIN)], rows[:, int(LV_MAX)] = log_small, beta.log()
        var = torch.ones_like(beta)
    var[prev < 0] = 0.0
    rows[:, int(SQRT_AB)] = a_t.sqrt()
    rows[:, int(SQRT_1M_AB)] = (1.0 - a_t).sqrt()
    rows[:, int(X0_X)] = a_t.rsqrt()
    rows[:, int(X0_EPS)] = ((1.0 - a_t) / a_t).sqrt()
    rows[:, int(C_X0)] = a_s.sqrt() * beta / (1.0 - a_t)
    rows[:, int(C_X)] = (a_t / a_s).sqrt() * (1.0 - a_s) / (1.0 - a_t)
    rows[:, int(SIGMA)] = var.sqrt()
    rows[:, int(GUIDE)] = 1.0
    return for_prediction(rows, prediction).to(device=device, dtype=dtype).contiguous()
