"""The reference path: every operation written straight from its paper's equations, eager PyTorch.

It is the oracle every fast path is tested against and the baseline every benchmark
compares with, so it has no cleverness: coefficients come from the schedule's float64
tables, noise is materialised (`fastddpm.kernels.randn` at the contract's address when
seeds= is given), every step is one line citing its equation. Coefficients are formed in
float64; arithmetic on the data happens in its dtype (float32/float64 for an accurate
result, bf16/fp16 to measure what plain low-precision PyTorch would get); the loss is
taken in at least float32.

The signatures are those of `fastddpm.fused`, so tests and the Trainer pick either:

    q_sample(x0, t, schedule, *, seeds=None, noise=None)
    reverse_step(x, eps_hat, t, schedule, *, seeds=None, noise=None, variance="large", clip=False)
    eps_mse_loss(eps_hat, t, *, seeds=None, noise=None, weights=None, reduction="mean")
    diffusion_loss(out, t, schedule, *, x0=None, seeds=None, noise=None, weights=None, prediction="epsilon", reduction="mean")
    sampler_step(x, eps_hat, k, plan, *, seeds=None, noise=None, h=None) -> (x_s, x̂_0 or None)

Of the fast path it imports only the noise contract (kernels.randn, the stream numbers)
and the plan's timesteps; never a kernel's arithmetic, never a coefficient table.
"""

import math

import torch

from .. import kernels as K
from . import conventions
from .outputs import checked_output, num_classes, seed_tensor
from .plan import Plan
from .schedule import Schedule


def _noise(noise, seeds, t, stream, like):
    """The explicit noise, else the addressed draw materialised, in like's dtype and layout."""
    if (seeds is None) == (noise is None):
        raise ValueError("pass exactly one of seeds= (the addressed noise) and noise= (an explicit tensor)")
    if noise is None:
        noise = K.randn(like.shape, seeds, t.to(like.device), stream, device=like.device)
    return noise.to(like.dtype)


def _check(schedule: Schedule, t: torch.Tensor = None, name: str = "t") -> None:
    """schedule is a Schedule, and every t in [0, T)."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a fastddpm.Schedule, got {type(schedule).__name__}")
    if t is not None:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected an int32/int64 tensor of timesteps, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        # read on the host only where the kernels' own range checks are (never compiling or capturing;
        # on CUDA only with value checks on): a compiled or timed reference gets no break and no sync
        if t.numel() and K.values_checked(t) and (int(t.min()) < 0 or int(t.max()) >= schedule.T):
            raise ValueError(f"{name}: expected every timestep in [0, {schedule.T}), got values in [{int(t.min())}, {int(t.max())}]")


def _at(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """a_t = alphas_cumprod[t] (ᾱ_t² in the seed notation) per sample, with a_{-1} = 1:
    (B, 1, 1, 1) float64. Coefficients are formed in float64 and meet the data in its
    dtype only at the multiplication (`_lo`)."""
    a = schedule.on("alphas_cumprod", like.device)
    t = t.to(like.device).long()
    return torch.where(t >= 0, a[t.clamp(min=0)], torch.ones_like(a[:1])).view(-1, 1, 1, 1)


class _StepGrid:
    """The ᾱ² a DPM-Solver++ plan walks, indexed by step k rather than by timestep: the plan's
    grid (ᾱ²[t_k]; Karras et al.'s σ grid; 2**-24 for ᾱ² = 0 as diffusers), which the solver's
    equations below are then written on."""

    def __init__(self, plan: Plan):
        self.alphas_cumprod = plan.alphas

    def on(self, name: str, device) -> torch.Tensor:
        return getattr(self, name).to(device)


def _lo(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.to(like.dtype)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, *, seeds=None, noise=None) -> torch.Tensor:
    """x_t = ᾱ_t x_0 + β̄_t ε                                   (Ho et al. eq. 4)."""
    _check(schedule, t)
    eps = _noise(noise, seeds, t, K.STREAM_NOISING, x0)
    a = _at(schedule, t, x0)
    return _lo(a.sqrt(), x0) * x0 + _lo((1 - a).sqrt(), x0) * eps


def predictions(x, out, t, schedule, prediction="epsilon") -> tuple:
    """(x̂_0, ε̂) from the model's output `out` for what the model predicts."""
    a = _at(schedule, t, x)
    al, sg = _lo(a.sqrt(), x), _lo((1 - a).sqrt(), x)
    prediction = K.prediction_name(prediction)
    if prediction == "epsilon":
        return (x - sg * out) / al, out                         # (Ho et al. eq. 15)
    if prediction == "v":
        # v = α ε − σ x_0, so x_0 = α x − σ v and ε = σ x + α v   (Salimans & Ho 2022, §4 and App. D)
        return al * x - sg * out, sg * x + al * out
    return out, (x - al * out) / sg                             # x_0-prediction: ε from x_t = α x_0 + σ ε


def ddpm_step(x, eps_hat, t, s, schedule, z, variance="large", clip=False, prediction="epsilon", v=None) -> torch.Tensor:
    """One step t -> s of the (respaced) DDPM chain (Ho et al.; Nichol & Dhariwal's
    respacing: the chain's own β' = 1 - a_t/a_s). s = t - 1 is the ancestral step.
    eps_hat is the model's output: ε̂, or v or x̂_0 as `prediction` says. variance="learned":
    v is the model's variance half (learned_variance)."""
    if variance not in K.VARIANCES:
        raise ValueError(f"variance: expected one of {K.VARIANCES}, got {variance!r}")
    a_t, a_s = _at(schedule, t, x), _at(schedule, s, x)
    beta = 1 - a_t / a_s  # β' (β_t when s = t - 1)
    if K.prediction_name(prediction) != "epsilon":
        x0 = predictions(x, eps_hat, t, schedule, prediction)[0]
        x0 = x0.clamp(-1.0, 1.0) if clip else x0
        # the posterior mean of q(x_s | x_t, x̂_0)               (Ho et al. eq. 7)
        mean = _lo(a_s.sqrt() * beta / (1 - a_t), x) * x0 + _lo((1 - beta).sqrt() * (1 - a_s) / (1 - a_t), x) * x
    elif clip:
        # x̂_0, clipped                                          (Ho et al. eq. 15)
        x0 = ((x - _lo((1 - a_t).sqrt(), x) * eps_hat) / _lo(a_t.sqrt(), x)).clamp(-1.0, 1.0)
        # the posterior mean of q(x_s | x_t, x̂_0)               (Ho et al. eq. 7)
        mean = _lo(a_s.sqrt() * beta / (1 - a_t), x) * x0 + _lo((1 - beta).sqrt() * (1 - a_s) / (1 - a_t), x) * x
    else:
        # the mean from ε̂ directly                              (Ho et al. eq. 11)
        mean = (x - _lo(beta / (1 - a_t).sqrt(), x) * eps_hat) / _lo((1 - beta).sqrt(), x)
    # σ: large √β', small the posterior's √(β'(1 - a_s)/(1 - a_t)), none 0; 0 into the end
    if variance == "learned":
        if v is None:
            raise ValueError("v: variance='learned' needs the model's variance half")
        sigma = learned_variance(v, t, s, schedule).sqrt()
    else:
        sigma = {"large": beta.sqrt(), "small": (beta * (1 - a_s) / (1 - a_t)).sqrt(), "none": torch.zeros_like(beta)}[variance]
    sigma = torch.where(s.to(x.device).view(-1, 1, 1, 1) < 0, torch.zeros_like(sigma), sigma)
    return mean + _lo(sigma, x) * z                           # (Ho et al. Algorithm 2)


def learned_variance(v, t, s, schedule, above=None) -> torch.Tensor:
    """The step t -> s's variance from the model's v ∈ [−1, 1] (Nichol & Dhariwal 2021, eq. 15):
    Σ = exp(f log β' + (1 − f) log β̃), f = (v + 1)/2, β' = 1 − a_t/a_s, β̃ = β' (1 − a_s)/(1 − a_t).
    Into the end (s = −1) β̃ = 0; OpenAI clips its log to that of the step into t, from the
    chain's timestep above t (`above`, per sample): without it the variance there is 0 (it is
    only reported: that step adds no noise). In v's dtype, at least float32."""
    f = (v.to(torch.promote_types(v.dtype, torch.float32)) + 1) / 2
    a_t, a_s = _at(schedule, t, f), _at(schedule, s, f)
    beta = 1 - a_t / a_s
    small = beta * (1 - a_s) / (1 - a_t)
    end = s.to(f.device).view(-1, 1, 1, 1) < 0
    if above is not None:  # log β̃ of the step above -> t, OpenAI's posterior_log_variance_clipped[0]
        a_u = _at(schedule, above, f)
        small = torch.where(end, (1 - a_u / a_t) * (1 - a_t) / (1 - a_u), small)
    var = torch.exp(f * _lo(beta.log(), f) + (1 - f) * _lo(small.clamp(min=1e-300).log(), f))
    return var if above is not None else torch.where(end, torch.zeros_like(var), var)


def ddim_step(x, eps_hat, t, s, schedule, z, eta=0.0, clip=False, clipped_eps=False, prediction="epsilon") -> tuple:
    """One DDIM step t -> s (Song et al. 2021). Returns (x_s, x̂_0). eps_hat is the model's
    output: ε̂, or v or x̂_0 as `prediction` says."""
    a_t, a_s = _at(schedule, t, x), _at(schedule, s, x)
    # x̂_0, "predicted x_0"                                      (Song et al. eq. 12)
    x0, eps_hat = predictions(x, eps_hat, t, schedule, prediction)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    eps = (x - _lo(a_t.sqrt(), x) * x0) / _lo((1 - a_t).sqrt(), x) if clipped_eps else eps_hat
    # σ(η) = η √((1 - a_s)/(1 - a_t)) √(1 - a_t/a_s)              (Song et al. eq. 16)
    sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
    # x_s = √a_s x̂_0 + √(1 - a_s - σ²) ε + σ z                   (Song et al. eq. 12)
    direction = (1 - a_s - sigma**2).clamp(min=0).sqrt()
    return _lo(a_s.sqrt(), x) * x0 + _lo(direction, x) * eps + _lo(sigma, x) * z, x0


def dpm_solver_step(x, x0, t, s, schedule, z=None, x0_prev=None, t_prev=None) -> torch.Tensor:
    """One DPM-Solver++ step t -> s from the data prediction x̂_0 (Lu et al. 2022):
    first order without history, 2M (multistep, midpoint) with the previous step's x̂_0 at
    t_prev; the SDE variant when z is given. α = √a, σ = √(1 - a), λ = log α - log σ."""
    a_t, a_s = _at(schedule, t, x), _at(schedule, s, x)
    al_t, sg_t, al_s, sg_s = a_t.sqrt(), (1 - a_t).sqrt(), a_s.sqrt(), (1 - a_s).sqrt()
    lam_t, lam_s = al_t.log() - sg_t.log(), al_s.log() - sg_s.log()  # λ_s = +inf at the end
    h = lam_s - lam_t
    if x0_prev is None:
        d = x0                                                  # first order (= DDIM η = 0)
    else:
        a_p = _at(schedule, t_prev, x)
        r = (lam_t - (a_p.sqrt().log() - (1 - a_p).sqrt().log())) / h  # r = h_prev / h
        d = _lo(1 + 1 / (2 * r), x) * x0 - _lo(1 / (2 * r), x) * x0_prev  # Lu et al. Algorithm 2, D_i
    if z is None:
        # x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D                (Lu et al. eq. 9 / Algorithm 2)
        return _lo(sg_s / sg_t, x) * x - _lo(al_s * (torch.exp(-h) - 1), x) * d
    # x_s = (σ_s/σ_t) e^{-h} x_t + α_s (1 - e^{-2h}) D + σ_s √(1 - e^{-2h}) z   (SDE-DPM-Solver++, Lu et al. App. B)
    return (_lo(sg_s / sg_t * torch.exp(-h), x) * x + _lo(al_s * (1 - torch.exp(-2 * h)), x) * d
            + _lo(sg_s * (1 - torch.exp(-2 * h)).sqrt(), x) * z)


def reverse_step(x, eps_hat, t, schedule: Schedule, *, seeds=None, noise=None, variance="large", clip=False) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} with ε-prediction: ddpm_step to t - 1. variance="learned":
    eps_hat is a learned-Σ model's whole output (B, 2C, H, W), ε̂ then v."""
    _check(schedule, t)
    z = _noise(noise, seeds, t, K.STREAM_REVERSE, x)
    v = None
    if variance == "learned":
        C = x.shape[1]
        if eps_hat.shape[1] != 2 * C:
            raise ValueError(f"eps_hat: variance='learned' takes the model's whole output, {2 * C} channels (ε̂, then v), "
                             f"got {eps_hat.shape[1]}")
        eps_hat, v = eps_hat[:, :C], eps_hat[:, C:]
    return ddpm_step(x, eps_hat, t, t.long() - 1, schedule, z, variance, clip, v=v)


def eps_mse_loss(eps_hat, t, *, seeds=None, noise=None, weights=None, reduction="mean") -> torch.Tensor:
    """w_t ‖ε - ε̂‖² averaged over (C, H, W), then over the batch (Ho et al. eq. 14),
    computed in at least float32."""
    e = eps_hat.to(torch.promote_types(eps_hat.dtype, torch.float32))
    eps = _noise(noise, seeds, t, K.STREAM_NOISING, e)
    per_sample = ((e - eps) ** 2).mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, e.dtype)[t.long()]
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def diffusion_loss(out, t, schedule: Schedule, *, x0=None, seeds=None, noise=None, weights=None, prediction="epsilon",
                   reduction="mean") -> torch.Tensor:
    """w_t ‖y - m‖² for the target y of what the model predicts, computed in at least float32:
    ε (Ho et al. eq. 14), v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022, §4), or x_0."""
    prediction = K.prediction_name(prediction)
    _check(schedule, t)
    if prediction == "epsilon":
        return eps_mse_loss(out, t, seeds=seeds, noise=noise, weights=weights, reduction=reduction)
    m = out.to(torch.promote_types(out.dtype, torch.float32))
    x0 = x0.to(m.dtype)
    if prediction == "sample":
        target = x0
    else:
        eps = _noise(noise, seeds, t, K.STREAM_NOISING, m)
        a = _at(schedule, t, m)
        target = _lo(a.sqrt(), m) * eps - _lo((1 - a).sqrt(), m) * x0
    return eps_mse_loss(m, t, noise=target, weights=weights, reduction=reduction)


class MultistepSolver:
    """DPM-Solver++(3M) and its SDE form, UniPC and iPNDM, one step at a time, from the papers'
    equations on the data: the state a chain carries (earlier outputs; UniPC's corrected state)
    kept here, the corrector applied as its own update. Grid point i is the plan's step i, with
    ᾱ² = plan.alphas[i] (1 at i = K, the end); α = √ᾱ², σ = √(1 − ᾱ²), λ = log α − log σ.

    dpm++3m (Lu et al. 2022, multistep third order, data prediction; SDE variant their App. B):
        D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, r_j = h_j/h,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 − D1_1),  D2 = (D1_0 − D1_1)/(r0 + r1)
        x_s = (σ_s/σ_t) x − α_s (e^{-h} − 1) m0 + α_s ((e^{-h} − 1)/h + 1) D1 − α_s ((e^{-h} − 1 + h)/h² − ½) D2
    unipc (Zhao et al. 2023, Algorithm 2 with B(h) = h (bh1) or e^h − 1 (bh2), in data prediction):
        UniP-p:  x̃_s = (σ_s/σ_t) x^c_t − α_s (e^{-h} − 1) m_t − α_s B(h) Σ_k ρ^p_k D_k
        UniC-p:  x^c_s = (σ_s/σ_t) x^c_t − α_s (e^{-h} − 1) m_t − α_s B(h) (Σ_k ρ^c_k D_k + ρ^c_p (m_s − m_t))
        with D_k = (m_{t_k} − m_t)/r_k and ρ solving R ρ = b (R_jk = r_k^j, b_j = h φ_{j+1}(h) (j+1)!/B(h));
        m_s is the model at the uncorrected x̃_s: the corrector costs no evaluation.
    ipndm (Zhang & Chen 2023): in y = x/α, σ̃ = σ/α the flow is dy/dσ̃ = ε̂, and
        y_s = y_t + (σ̃_s − σ̃_t) Σ_j c_j ε̂_{t−j}  (Adams–Bashforth weights of order min(order, i + 1))
    Orders: warm-up from 1; the step into σ = 0 is first order; DPM-Solver++(3M) with
    lower_order_final and under 15 steps takes its second-last step at order 2, UniPC's order is
    min(order, steps left) with lower_order_final (diffusers' rules).
    """

    AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

    def __init__(self, plan: Plan):
        self.plan, self.m = plan, plan.method
        a = torch.cat([plan.alphas.to(torch.float64), torch.ones(1, dtype=torch.float64)])
        self.al, self.sg = a.sqrt(), (1 - a).sqrt()
        self.lam = self.al.log() - self.sg.log()  # +inf at the end
        self.outputs = []  # the converted model outputs so far (x̂_0, or ε̂ for iPNDM), newest last
        self.last = None  # UniPC: the corrected state the last predictor started from
        self.order_prev = None

    def step(self, i: int, x, out, z=None):
        """x at grid point i and the model's output there -> x at i + 1."""
        m, K = self.m, self.plan.K
        t = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
        x0, eps = predictions(x, out, t, _StepGrid(self.plan), m.prediction)
        if m.name == "ipndm":
            self.outputs.append(eps)
            p = min(m.order, i + 1)
            d = sum(c * e for c, e in zip(self.AB[p], reversed(self.outputs[-p:])))
            st, ss = (self.sg[i] / self.al[i]).item(), (self.sg[i + 1] / self.al[i + 1]).item()
            return _lo(self.al[i + 1], x) * (x / _lo(self.al[i], x) + (ss - st) * d)
        if m.name == "unipc":
            if m.corrector and i > 0 and (i - 1) not in m.disable_corrector:
                x = self._unipc(i - 1, self.last, self.order_prev, x0)  # UniC at point i, from the corrected i - 1
            self.outputs.append(x0)
            p = min(m.order, K - i) if m.lower_order_final else m.order
            p = 1 if i == K - 1 else min(p, i + 1)
            self.last, self.order_prev = x, p
            return self._unipc(i, x, p)
        self.outputs.append(x0)
        p = min(3, i + 1)
        if i == K - 1:
            p = 1
        elif i == K - 2 and m.lower_order_final and K < 15:
            p = min(p, 2)
        return self._dpm(i, x, p, z if m.name == "sde-dpm++3m" else None)

    def _dpm(self, i, x, p, z):
        lam, al, sg = self.lam, self.al, self.sg
        h = (lam[i + 1] - lam[i]).item()
        m0 = self.outputs[-1]
        if p == 1:
            d1 = d2 = 0.0
        else:
            r0 = (lam[i] - lam[i - 1]).item() / h
            D1_0 = (m0 - self.outputs[-2]) / r0
            if p == 2:
                d1, d2 = D1_0, 0.0  # 2M: D1 = D1_0, weighed as ½ below, as the midpoint form does
            else:
                r1 = (lam[i - 1] - lam[i - 2]).item() / h
                D1_1 = (self.outputs[-2] - self.outputs[-3]) / r1
                d1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                d2 = (D1_0 - D1_1) / (r0 + r1)
        e, a_s = math.exp(-h), al[i + 1].item()
        if p == 1:  # DDIM's step (ODE), or its SDE form                    (Lu et al. 2022, eq. 9; App. B)
            if z is None:
                return (sg[i + 1] / sg[i]).item() * x - a_s * math.expm1(-h) * m0
            return (sg[i + 1] / sg[i]).item() * e * x + a_s * (1 - e * e) * m0 + sg[i + 1].item() * math.sqrt(1 - e * e) * z
        if z is None:
            if p == 2:  # x_s = (σ_s/σ_t) x − α_s (e^{-h} − 1) (m0 + ½ D1)     (Lu et al. 2022, Algorithm 2)
                return (sg[i + 1] / sg[i]).item() * x - a_s * math.expm1(-h) * (m0 + 0.5 * d1)
            return ((sg[i + 1] / sg[i]).item() * x - a_s * math.expm1(-h) * m0 + a_s * (math.expm1(-h) / h + 1) * d1
                    - a_s * ((math.expm1(-h) + h) / h**2 - 0.5) * d2)
        noise = sg[i + 1].item() * math.sqrt(max(1 - e * e, 0.0)) * z
        if p == 2:
            return (sg[i + 1] / sg[i]).item() * e * x + a_s * (1 - e * e) * (m0 + 0.5 * d1) + noise
        return ((sg[i + 1] / sg[i]).item() * e * x + a_s * (1 - e * e) * m0 + a_s * ((1 - e * e) / (-2 * h) + 1) * d1
                + a_s * ((1 - e * e - 2 * h) / (2 * h) ** 2 - 0.5) * d2 + noise)

    def _unipc(self, i, x, p, corrected_by=None):
        """UniP-p from grid point i to i + 1 (corrected_by None), or UniC-p there with the model's
        output at the uncorrected point i + 1 (corrected_by); self.outputs ends with point i's."""
        lam, al, sg = self.lam, self.al, self.sg
        h = (lam[i + 1] - lam[i]).item()
        hh = -h
        outs = self.outputs[: i + 1]  # the outputs up to point i
        m0 = outs[-1]
        x_s = (sg[i + 1] / sg[i]).item() * x - al[i + 1].item() * math.expm1(hh) * m0
        n = p - 1 if corrected_by is None else p  # ρ's the update solves for
        if n == 0:
            return x_s  # first order: no correction term (and at λ_s = ∞ not B(h) times an empty sum)
        rks = [(lam[i - k] - lam[i]).item() / h for k in range(1, p)] + [1.0]
        Ds = [(outs[-1 - k] - m0) / rks[k - 1] for k in range(1, p)]
        B_h = hh if self.m.solver_type == "bh1" else math.expm1(hh)
        # b_j = h φ_{j}(h) j! / B(h), φ_1(h) h = e^h − 1, φ_{k+1} = (φ_k − 1/k!)/h (Zhao et al., eq. 13)
        phi, fact, b = math.expm1(hh) / hh - 1, 1, []
        for j in range(1, p + 1):
            b.append(phi * fact / B_h)
            fact *= j + 1
            phi = phi / hh - 1 / fact
        if corrected_by is None:
            rho = [0.5] if p == 2 else torch.linalg.solve(
                torch.tensor([[r**j for r in rks[:-1]] for j in range(p - 1)], dtype=torch.float64),
                torch.tensor(b[:-1], dtype=torch.float64)).tolist()
            return x_s - al[i + 1].item() * B_h * sum(r * D for r, D in zip(rho, Ds))
        rho = [0.5] if p == 1 else torch.linalg.solve(
            torch.tensor([[r**j for r in rks] for j in range(p)], dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).tolist()
        corr = sum((r * D for r, D in zip(rho[:-1], Ds)), torch.zeros_like(x)) + rho[-1] * (corrected_by - m0)
        return x_s - al[i + 1].item() * B_h * corr


def _check_unscaled(plan: Plan) -> None:
    if plan.method.scales is not None:
        raise ValueError("scales: a refined plan's learned coefficients are not the papers' equations, which this "
                         "reference computes; the fused path runs them, and fastddpm.tune.chain is their reference")


def sampler_step(x, eps_hat, k, plan: Plan, *, seeds=None, noise=None, h=None, v=None) -> tuple:
    """Step k (per sample, (B,) int) of `plan`: x_{t_k} -> x_{prev_k}. Returns (x_s, x̂_0)
    for a multistep plan, (x_s, None) otherwise. v: a learned-variance model's variance half
    (needed by a ddpm plan with variance="learned", ignored by the others). The noise (stochastic plans only) is
    addressed by (seed, STREAM_REVERSE, t_k). DPM-Solver++(3M), UniPC and iPNDM carry more
    state than one x̂_0: their reference is `sample` (MultistepSolver)."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a fastddpm.Plan (Plan.build(schedule, method, ...)), got {type(plan).__name__}")
    m = plan.method
    if m.name not in ("ddpm", "ddim", "dpm++2m", "sde-dpm++2m"):
        raise ValueError(f"plan: the reference steps {m.name} only within a chain, which carries its state: use "
                         f"fastddpm.reference.sample (or reference.MultistepSolver)")
    _check_unscaled(plan)
    plan.check_history(h)
    k = k.to("cpu").long()
    t = torch.tensor(plan.timesteps)[k]
    s = torch.tensor(plan.prev)[k]
    # z: the addressed draw when some step of the plan adds noise (σ = 0 steps ignore it)
    z = _noise(noise, seeds, t, K.STREAM_REVERSE, x) if plan.stochastic else torch.zeros_like(x)
    if m.name == "ddpm":
        return ddpm_step(x, eps_hat, t, s, plan.schedule, z, m.variance, m.clip, m.prediction, v), None
    if m.name == "ddim":
        return ddim_step(x, eps_hat, t, s, plan.schedule, z, m.eta, m.clip, m.clipped_eps, m.prediction)[0], None
    grid = _StepGrid(plan)  # the solver's steps k -> k + 1 (-1: the end) on the plan's ᾱ² grid
    k_next = torch.where(s >= 0, k + 1, -1)
    x0 = predictions(x, eps_hat, k, grid, m.prediction)[0]  # data prediction (Lu et al. eq. 4)
    second = bool(((k > 0) & (s >= 0)).all())  # 2M after the first step; first order into the end
    if bool(((k > 0) & (s >= 0)).any()) != second:
        raise ValueError("k: a batch mixing first- and second-order steps is not supported by the reference")
    z = z if m.name == "sde-dpm++2m" else None
    return dpm_solver_step(x, x0, k, k_next, grid, z, h if second else None, (k - 1) if second else None), x0


@torch.no_grad()
def sample(model, schedule: Schedule, seeds: torch.Tensor, shape: tuple, method="ddpm", *, labels=None, stop_after: int = None,
           dtype: torch.dtype = torch.float32, **options) -> torch.Tensor:
    """Sampling one reference step at a time, eager, in `dtype` (float32 by default).

    method/options: as fastddpm.Sampler (steps, spacing, eta, variance, clip, clipped_eps,
    prediction, guidance, guidance_interval). labels: (B,) classes of a class-conditional model;
    a guided step calls it twice, with the labels and with the null label (num_classes), and
    takes m_u + w (m_c − m_u) (Ho & Salimans 2022, eq. 6). A learned-variance model (its
    conventions' learned_sigma) returns (B, 2C, H, W): the first C channels are its prediction
    (guided: combined as above), the last C its v, the conditional call's when guided.
    Same seeds contract as the Sampler: image k starts from the prior addressed by
    (seeds[k], STREAM_PRIOR, 0) and the step from t adds z addressed by
    (seeds[k], STREAM_REVERSE, t). stop_after: only the first n steps (returns that state).
    """
    plan = method if isinstance(method, Plan) else Plan.build(schedule, method, **options)
    _check_unscaled(plan)
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or not 0 <= stop_after <= plan.K):
        raise ValueError(f"stop_after: expected an int in [0, {plan.K}] (the plan's steps), got {stop_after!r}")
    seeds = seed_tensor(seeds)
    B = seeds.numel()
    dev = seeds.device
    x = K.randn((B, *shape), seeds, torch.zeros(B, dtype=torch.int64, device=dev), K.STREAM_PRIOR).to(dtype)  # x_T
    h = torch.zeros_like(x) if plan.multistep else None
    solver = MultistepSolver(plan) if plan.method.name not in ("ddpm", "ddim", "dpm++2m", "sde-dpm++2m") else None
    n = num_classes(model)
    if (n is None) != (labels is None):
        raise ValueError("labels: a class-conditional model needs them, an unconditional one takes none")
    null = None if n is None else torch.full((B,), n, dtype=torch.int64, device=dev)
    w = plan.method.guide_weights(list(plan.timesteps))
    learned = conventions.of(model).learned_sigma
    out_shape = (B, 2 * shape[0], *shape[1:]) if learned else x.shape
    C = shape[0]
    v = None
    for i in range(plan.K if stop_after is None else stop_after):
        k = torch.full((B,), i, dtype=torch.int64, device=dev)
        t = torch.full((B,), plan.timesteps[i], dtype=torch.int64, device=dev)
        if n is None:
            eps_hat = checked_output(model(x, t), out_shape).to(dtype)
        elif w[i] == 1.0:
            eps_hat = checked_output(model(x, t, labels), out_shape).to(dtype)
        else:  # classifier-free guidance: ε̂ = ε̂(x, ∅) + w (ε̂(x, c) − ε̂(x, ∅))      (Ho & Salimans 2022, eq. 6)
            cond = checked_output(model(x, t, labels), out_shape).to(dtype)
            uncond = checked_output(model(x, t, null), out_shape).to(dtype)
            eps_hat = torch.cat([uncond[:, :C] + w[i] * (cond[:, :C] - uncond[:, :C]), cond[:, C:]], dim=1)
        if learned:  # the prediction, and the variance half (Nichol & Dhariwal: v ∈ [−1, 1])
            eps_hat, v = eps_hat[:, :C], eps_hat[:, C:]
        if solver is not None:
            z = _noise(None, seeds, t, K.STREAM_REVERSE, x) if plan.stochastic else None
            x = solver.step(i, x, eps_hat, z)
            continue
        x, x0 = sampler_step(x, eps_hat, k, plan, seeds=seeds if plan.stochastic else None, h=h, v=v)
        h = x0
    return x
