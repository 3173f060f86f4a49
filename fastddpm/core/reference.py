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

import torch

from .. import kernels as K
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


def ddpm_step(x, eps_hat, t, s, schedule, z, variance="large", clip=False, prediction="epsilon") -> torch.Tensor:
    """One step t -> s of the (respaced) DDPM chain (Ho et al.; Nichol & Dhariwal's
    respacing: the chain's own β' = 1 - a_t/a_s). s = t - 1 is the ancestral step.
    eps_hat is the model's output: ε̂, or v or x̂_0 as `prediction` says."""
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
    sigma = {"large": beta.sqrt(), "small": (beta * (1 - a_s) / (1 - a_t)).sqrt(), "none": torch.zeros_like(beta)}[variance]
    sigma = torch.where(s.to(x.device).view(-1, 1, 1, 1) < 0, torch.zeros_like(sigma), sigma)
    return mean + _lo(sigma, x) * z                           # (Ho et al. Algorithm 2)


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
    """One ancestral step x_t -> x_{t-1} with ε-prediction: ddpm_step to t - 1."""
    _check(schedule, t)
    z = _noise(noise, seeds, t, K.STREAM_REVERSE, x)
    return ddpm_step(x, eps_hat, t, t.long() - 1, schedule, z, variance, clip)


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


def sampler_step(x, eps_hat, k, plan: Plan, *, seeds=None, noise=None, h=None) -> tuple:
    """Step k (per sample, (B,) int) of `plan`: x_{t_k} -> x_{prev_k}. Returns (x_s, x̂_0)
    for a multistep plan, (x_s, None) otherwise. The noise (stochastic plans only) is
    addressed by (seed, STREAM_REVERSE, t_k)."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a fastddpm.Plan (Plan.build(schedule, method, ...)), got {type(plan).__name__}")
    plan.check_history(h)
    m = plan.method
    k = k.to("cpu").long()
    t = torch.tensor(plan.timesteps)[k]
    s = torch.tensor(plan.prev)[k]
    # z: the addressed draw when some step of the plan adds noise (σ = 0 steps ignore it)
    z = _noise(noise, seeds, t, K.STREAM_REVERSE, x) if plan.stochastic else torch.zeros_like(x)
    if m.name == "ddpm":
        return ddpm_step(x, eps_hat, t, s, plan.schedule, z, m.variance, m.clip, m.prediction), None
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
    takes m_u + w (m_c − m_u) (Ho & Salimans 2022, eq. 6).
    Same seeds contract as the Sampler: image k starts from the prior addressed by
    (seeds[k], STREAM_PRIOR, 0) and the step from t adds z addressed by
    (seeds[k], STREAM_REVERSE, t). stop_after: only the first n steps (returns that state).
    """
    plan = method if isinstance(method, Plan) else Plan.build(schedule, method, **options)
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or not 0 <= stop_after <= plan.K):
        raise ValueError(f"stop_after: expected an int in [0, {plan.K}] (the plan's steps), got {stop_after!r}")
    seeds = seed_tensor(seeds)
    B = seeds.numel()
    dev = seeds.device
    x = K.randn((B, *shape), seeds, torch.zeros(B, dtype=torch.int64, device=dev), K.STREAM_PRIOR).to(dtype)  # x_T
    h = torch.zeros_like(x) if plan.multistep else None
    n = num_classes(model)
    if (n is None) != (labels is None):
        raise ValueError("labels: a class-conditional model needs them, an unconditional one takes none")
    null = None if n is None else torch.full((B,), n, dtype=torch.int64, device=dev)
    w = plan.method.guide_weights(list(plan.timesteps))
    for i in range(plan.K if stop_after is None else stop_after):
        k = torch.full((B,), i, dtype=torch.int64, device=dev)
        t = torch.full((B,), plan.timesteps[i], dtype=torch.int64, device=dev)
        if n is None:
            eps_hat = checked_output(model(x, t), x).to(dtype)
        elif w[i] == 1.0:
            eps_hat = checked_output(model(x, t, labels), x).to(dtype)
        else:  # classifier-free guidance: ε̂ = ε̂(x, ∅) + w (ε̂(x, c) − ε̂(x, ∅))      (Ho & Salimans 2022, eq. 6)
            cond = checked_output(model(x, t, labels), x).to(dtype)
            uncond = checked_output(model(x, t, null), x).to(dtype)
            eps_hat = uncond + w[i] * (cond - uncond)
        x, x0 = sampler_step(x, eps_hat, k, plan, seeds=seeds if plan.stochastic else None, h=h)
        h = x0
    return x
