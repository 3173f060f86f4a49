"""Sampling plans: which timesteps a sampler walks, and each step as one row of coefficients.

    plan = Plan.build(schedule, method="ddim", steps=50, eta=0.0, spacing="trailing")
    plan.timesteps     # (K,) the model's t at each step, descending
    plan.prev          # (K,) the timestep each step lands on; -1 is the end
    plan.rows          # (K, NCOEF) float64: the step's coefficients (kernels/tables.py)

Every method here moves from t to an earlier s with coefficients that depend only on
(t, s) and the step's position, never on the data (docs/notation.md, "Samplers"), so one
fused kernel runs all of them (`fastddpm.kernels.sampler_step`). The rows are the fast
path's; `fastddpm.reference` recomputes every step from the papers' equations instead and
uses only the timesteps from here.

Timesteps follow diffusers' schedulers, spacing by spacing ("trailing", "leading",
"linspace"): DDPMScheduler/DDIMScheduler for ddpm and ddim, DPMSolverMultistepScheduler
(its N + 1 point grids, which UniPCMultistepScheduler shares) for the multistep solvers
(DPM-Solver++ 2M and 3M, UniPC, iPNDM), which also take Karras et al.'s σ grid ("karras") and
one uniform in λ ("logsnr"); "quad" is the DDIM paper's CIFAR choice,
t = int(linspace(0, √(0.8 T), N)²). The multistep solvers' rows come from solvers.py. One deliberate difference: diffusers' DDIM
steps from t to t - T // N whatever its own next timestep is; here every method steps to
its next timestep, which is the same thing wherever that spacing is uniform (leading, and
trailing when N divides T) and a consistent chain where it is not.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import kernels as K
from ..kernels.tables import C_EPS, C_H1, C_H2, C_H3, C_X, C_X0, GUIDE, HISTORY, NCOEF, SIGMA, SQRT_1M_AB, SQRT_AB, X0_EPS, X0_X
from .solvers import solver_coefficients
from .schedule import Schedule

METHODS = ("ddpm", "ddim", "dpm++2m", "sde-dpm++2m", "dpm++3m", "sde-dpm++3m", "unipc", "ipndm")
SOLVERS = METHODS[2:]  # the multistep ODE/SDE solvers: DPM-Solver's N + 1 point grids, its ᾱ², Karras and logSNR spacings
SPACINGS = ("trailing", "leading", "linspace", "quad", "karras", "logsnr")
DEFAULT_STEPS = {"ddim": 50, **{name: 20 for name in SOLVERS}}  # ddpm: all T
ORDERS = {"unipc": (1, 3, 2), "ipndm": (1, 4, 2)}  # method: (lowest, highest, default) order; the others name theirs
# iPNDM defaults to 2, not the paper's 4: on DDPM grids at <= 10 steps σ/α shrinks several-fold from one step to the
# next, and fourth-order fixed weights extrapolate ε̂ across that (measured FD 114 against 5.3 at 6 steps on the
# digits model, 567 against 125 on fashion-mnist-small: README, "Which sampler")
SOLVER_TYPES = ("bh1", "bh2")  # UniPC's B(h): h (bh1) or e^h − 1 (bh2), Zhao et al. 2023
# The weights a refined plan (fastddpm.tune --learn) scales, step by step, in the ε-prediction rows before they are
# rewritten for the model's prediction: x̂_0's, x_t's, ε̂'s and the three history slots' (docs/notation.md's columns)
SCALED = {"x0": C_X0, "x": C_X, "eps": C_EPS, "h1": C_H1, "h2": C_H2, "h3": C_H3}
SCALABLE = ("ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm")  # deterministic: a learned factor never meets the noise


@dataclass(frozen=True)
class Method:
    """A sampler configuration. Defaults: DDPM, every one of the T steps, σ_t = β_t."""

    name: str = "ddpm"
    steps: int = None  # number of model evaluations; None: T for ddpm, DEFAULT_STEPS otherwise
    spacing: str = "trailing"
    eta: float = 0.0  # ddim: 0 deterministic, 1 the ancestral variance
    variance: str = "large"  # ddpm: "large" (β'), "small" (posterior), "none", "learned" (a learned-Σ model's range)
    clip: bool = False  # ddpm, ddim: clamp x̂_0 to [-1, 1]
    clipped_eps: bool = False  # ddim with clip: recompute ε from the clipped x̂_0 (diffusers' use_clipped_model_output)
    prediction: str = "epsilon"  # what the model predicts: "epsilon", "v" or "sample" (x_0); diffusers' names accepted
    offset: int = 0  # diffusers' steps_offset: added to every timestep of the "leading" spacing
    guidance: float = None  # classifier-free guidance weight w (Ho & Salimans 2022); None: unguided (w = 1)
    guidance_interval: tuple = None  # (t_lo, t_hi): w only for t_lo < t <= t_hi, 1 elsewhere (Kynkäänniemi et al. 2024)
    order: int = None  # unipc (1-3, default 2, diffusers' solver_order), ipndm (1-4, default 2); None: the method's
    solver_type: str = None  # unipc: "bh1" or "bh2" (default, diffusers')
    corrector: bool = None  # unipc: UniC after every step but the last (default True), folded into the next step's row
    disable_corrector: tuple = ()  # unipc: steps i whose successor is not corrected (diffusers' disable_corrector)
    lower_order_final: bool = None  # DPM-Solver++ and UniPC: lower orders in the last steps (default True, diffusers')
    timesteps: tuple = None  # a grid of its own (a tuned plan's, fastddpm.tune): descending ints in [0, T); None: spacing's
    scales: tuple = None  # a refined plan's learned factors on each step's weights: K rows, one per SCALED column; None: 1

    def checked(self, T: int) -> "Method":
        """This configuration with its steps filled in, or a ValueError naming the argument."""
        if self.name not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.name!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing: expected one of {SPACINGS}, got {self.spacing!r}")
        steps = self.steps
        grid = self.timesteps
        if grid is not None:
            ok = isinstance(grid, (tuple, list)) and len(grid) > 0 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in grid)
            if not ok or any(not 0 <= v < T for v in grid) or any(a <= b for a, b in zip(grid, grid[1:])):
                raise ValueError(f"timesteps: expected a strictly descending sequence of ints in [0, {T}) (the schedule's "
                                 f"T), got {grid!r}")
            if steps is not None and steps != len(grid):
                raise ValueError(f"steps: {steps} given with {len(grid)} timesteps; a grid of its own sets the steps")
            if self.spacing != "trailing":
                raise ValueError(f"spacing: {self.spacing!r} given with timesteps of its own; the grid replaces the spacing")
            steps, grid = len(grid), tuple(grid)
        if steps is None:
            steps = T if self.name == "ddpm" else min(DEFAULT_STEPS[self.name], T)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"steps: expected an int in [1, {T}] (the schedule's T), got {steps!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not math.isfinite(self.eta) or self.eta < 0:
            raise ValueError(f"eta: expected a finite number >= 0, got {self.eta!r}")
        if self.eta and self.name != "ddim":
            raise ValueError(f"eta: only ddim takes η (got eta={self.eta} with method {self.name!r})")
        if self.variance not in K.VARIANCES:
            raise ValueError(f"variance: expected one of {K.VARIANCES}, got {self.variance!r}")
        if self.variance != "large" and self.name != "ddpm":
            raise ValueError(f"variance: only ddpm takes a variance (ddim sets it with eta), got {self.variance!r} with {self.name!r}")
        for name in ("clip", "clipped_eps"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if self.clip and self.name not in ("ddpm", "ddim"):
            raise ValueError(f"clip: only ddpm and ddim clip x̂_0 (diffusers' {self.name} has no clip_sample to match)")
        if self.clipped_eps and not (self.name == "ddim" and self.clip):
            raise ValueError("clipped_eps: only ddim with clip=True recomputes ε from the clipped x̂_0")
        prediction = K.prediction_name(self.prediction)
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"offset: expected an int >= 0 (diffusers' steps_offset), got {self.offset!r}")
        if self.offset and self.spacing != "leading":
            raise ValueError(f"offset: diffusers adds steps_offset to the 'leading' spacing only, got spacing {self.spacing!r}")
        guidance, interval = self.guidance, self.guidance_interval
        if guidance is not None:
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
                raise ValueError(f"guidance: expected a finite weight w >= 0 (0 unconditional, 1 plain conditional), got {guidance!r}")
            guidance = float(guidance)
        if interval is not None:
            if guidance is None:
                raise ValueError("guidance_interval: given without guidance=w")
            ok = isinstance(interval, (tuple, list)) and len(interval) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in interval)
            if not ok or not interval[0] < interval[1] or interval[1] < 0 or interval[0] >= T - 1:
                raise ValueError(f"guidance_interval: expected (t_lo, t_hi) with t_lo < t_hi, guiding the timesteps "
                                 f"t_lo < t <= t_hi of [0, {T}), got {interval!r}")
            interval = (float(interval[0]), float(interval[1]))
        order, solver_type, corrector, disable, lof = self._solver_options()
        scales = self._checked_scales(steps)
        return Method(self.name, steps, self.spacing, float(self.eta), self.variance, self.clip, self.clipped_eps, prediction,
                      self.offset, guidance, interval, order, solver_type, corrector, disable, lof, grid, scales)

    def _checked_scales(self, steps: int) -> tuple:
        """scales as a tuple of `steps` tuples of len(SCALED) floats, or None."""
        if self.scales is None:
            return None
        if self.name not in SCALABLE or self.eta:
            raise ValueError(f"scales: learned factors are for the deterministic samplers {SCALABLE} (ddim with η = 0), "
                             f"not {self.name!r}{f' η={self.eta:g}' if self.eta else ''}")
        try:
            rows = tuple(tuple(float(v) for v in row) for row in self.scales)
        except (TypeError, ValueError):
            rows = None
        if rows is None or len(rows) != steps or any(len(r) != len(SCALED) for r in rows) or not all(
                math.isfinite(v) for r in rows for v in r):
            raise ValueError(f"scales: expected {steps} rows (one per step) of {len(SCALED)} finite factors "
                             f"({', '.join(SCALED)}), got {self.scales!r}")
        return rows

    def _solver_options(self) -> tuple:
        """(order, solver_type, corrector, disable_corrector, lower_order_final), checked and filled in."""
        name = self.name
        order = self.order
        if order is not None:
            if name not in ORDERS:
                named = {"dpm++2m": 2, "sde-dpm++2m": 2, "dpm++3m": 3, "sde-dpm++3m": 3}.get(name)
                raise ValueError(f"order: only {' and '.join(ORDERS)} take an order" + (
                    f" ({name!r} is order {named} by name: dpm++2m or dpm++3m)" if named else f", not {name!r}"))
            lo, hi, _ = ORDERS[name]
            if isinstance(order, bool) or not isinstance(order, int) or not lo <= order <= hi:
                raise ValueError(f"order: {name} has orders {lo} to {hi}, got {order!r}")
        elif name in ORDERS:
            order = ORDERS[name][2]
        solver_type = self.solver_type
        if solver_type is not None and name != "unipc":
            raise ValueError(f"solver_type: only unipc takes a solver type (bh1, bh2), not {name!r}")
        if name == "unipc":
            solver_type = "bh2" if solver_type is None else solver_type
            if solver_type not in SOLVER_TYPES:
                raise ValueError(f"solver_type: expected one of {SOLVER_TYPES} (UniPC's B(h)), got {solver_type!r}")
        corrector = self.corrector
        if corrector and name != "unipc":  # (False: no corrector, which every other method has)
            raise ValueError(f"corrector: only unipc has a corrector (UniC), not {name!r}")
        if corrector is not None and not isinstance(corrector, bool):
            raise TypeError(f"corrector: expected True or False, got {corrector!r}")
        corrector = (name == "unipc") if corrector is None else corrector
        disable = self.disable_corrector
        if disable is None or isinstance(disable, (str, bytes)) or not hasattr(disable, "__iter__"):
            raise TypeError(f"disable_corrector: expected a sequence of step indices, got {disable!r}")
        disable = tuple(disable)
        if disable and name != "unipc":
            raise ValueError(f"disable_corrector: only unipc has a corrector, not {name!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in disable):
            raise ValueError(f"disable_corrector: expected step indices (ints >= 0), got {disable!r}")
        if disable and not corrector:
            raise ValueError("disable_corrector: given with corrector=False (no step is corrected)")
        disable = tuple(sorted(set(disable)))
        lof = self.lower_order_final
        warm_down = name in ("dpm++3m", "sde-dpm++3m", "unipc")  # (2M's only lower step is the last, always first order)
        if lof is not None and not isinstance(lof, bool):
            raise TypeError(f"lower_order_final: expected True or False, got {lof!r}")
        if lof is False and not warm_down:
            raise ValueError(f"lower_order_final: only dpm++3m, sde-dpm++3m and unipc lower their order in the last steps, "
                             f"not {name!r}")
        return order, solver_type, corrector, disable, (True if lof is None else lof)

    @property
    def solver(self) -> bool:
        """A multistep ODE/SDE solver: DPM-Solver's timestep grids and ᾱ² (zero SNR: 2**-24), Karras and logSNR spacings."""
        return self.name in SOLVERS

    @property
    def history(self) -> int:
        """How many earlier outputs a step may weigh (the history ring's slots): 0 history-free."""
        if self.name in ("dpm++2m", "sde-dpm++2m"):
            return 1
        if self.name in ("dpm++3m", "sde-dpm++3m"):
            return 2
        if self.name == "unipc":  # the predictor reads order - 1 earlier outputs, the corrector one more
            return self.order if self.corrector else self.order - 1
        if self.name == "ipndm":
            return self.order - 1
        return 0

    @property
    def multistep(self) -> bool:
        """Steps use earlier steps' outputs (the history ring h)."""
        return self.history > 0

    @property
    def basis(self) -> str:
        """What a step stores for the later ones: "x0" (data prediction) or "eps" (iPNDM)."""
        return "eps" if self.name == "ipndm" else "x0"

    def guide_weights(self, ts: list) -> list:
        """w at each of these timesteps: the guidance weight inside the interval (everywhere
        without one), 1 elsewhere; all 1 unguided."""
        if self.guidance is None:
            return [1.0] * len(ts)
        lo, hi = self.guidance_interval or (-math.inf, math.inf)
        return [self.guidance if lo < t <= hi else 1.0 for t in ts]

    def label(self) -> str:
        extra = {"ddpm": f" {self.variance}", "ddim": f" η={self.eta:g}"}.get(self.name, "")
        if self.name == "unipc":
            extra = f"-{self.order} {self.solver_type}" + ("" if self.corrector else " no corrector")
        elif self.name == "ipndm":
            extra = f"-{self.order}"
        pred = "" if self.prediction == "epsilon" else f", {self.prediction}-prediction"
        guide = "" if self.guidance is None else f", guidance {self.guidance:g}" + (
            f" in ({self.guidance_interval[0]:g}, {self.guidance_interval[1]:g}]" if self.guidance_interval else "")
        grid = self.spacing if self.timesteps is None else "timesteps " + ",".join(map(str, self.timesteps))
        grid += "" if self.scales is None else ", learned coefficients"
        return f"{self.name}{extra} {self.steps} steps ({grid}{pred}{guide})" + (" clip" if self.clip else "")


def karras_alphas(alphas_cumprod: torch.Tensor, N: int) -> torch.Tensor:
    """ᾱ² of Karras et al.'s (2022) σ grid, ρ = 7, between the schedule's σ_max and σ_min
    (σ = √((1 − ᾱ²)/ᾱ²)), descending in σ: diffusers' use_karras_sigmas."""
    sig = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    lo, hi = float(sig[0]) ** (1 / 7), float(sig[-1]) ** (1 / 7)
    sigmas = (hi + torch.linspace(0, 1, N, dtype=torch.float64) * (lo - hi)) ** 7
    return 1 / (1 + sigmas**2)


def logsnr_alphas(alphas_cumprod: torch.Tensor, N: int) -> torch.Tensor:
    """ᾱ² of N points uniform in log σ (so in λ = −log σ) between the schedule's σ_max and σ_min,
    descending in σ: diffusers' use_lu_lambdas (Lu et al. 2022's recommendation at low resolution)."""
    log_sig = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().log()
    hi, lo = float(log_sig[-1]), float(log_sig[0])
    sigmas = (hi + torch.linspace(0, 1, N, dtype=torch.float64) * (lo - hi)).exp()
    return 1 / (1 + sigmas**2)


def _sigma_to_t(sigmas: torch.Tensor, alphas_cumprod: torch.Tensor) -> list:
    """The timestep of each σ, interpolated in log σ between the schedule's, rounded (diffusers' _sigma_to_t)."""
    log_sig = (((1 - alphas_cumprod) / alphas_cumprod).sqrt()).log().numpy()
    out = []
    for s in sigmas.numpy():
        ls = np.log(max(s, 1e-10))
        low = min(int(np.cumsum(ls - log_sig >= 0).argmax()), len(log_sig) - 2)
        w = np.clip((log_sig[low] - ls) / (log_sig[low] - log_sig[low + 1]), 0, 1)
        out.append(int(np.round((1 - w) * low + w * (low + 1))))
    return out


def timesteps(T: int, method: Method, alphas_cumprod: torch.Tensor = None) -> list:
    """The model's timesteps, descending, for a checked method (diffusers' grids); the
    "karras" spacing needs the schedule's alphas_cumprod."""
    N, spacing = method.steps, method.spacing
    if method.timesteps is not None:  # a grid of its own (checked by Method.checked)
        return list(method.timesteps)
    if spacing in ("karras", "logsnr"):
        if not method.solver:
            what = "Karras et al.'s σ grid (diffusers' use_karras_sigmas)" if spacing == "karras" else \
                "uniform in λ (diffusers' use_lu_lambdas)"
            raise ValueError(f"spacing: {spacing!r} is a multistep solver's grid, {what}: use it with {', '.join(SOLVERS)}, "
                             f"not {method.name!r}")
        ac = solver_alphas_cumprod(alphas_cumprod)
        a = (karras_alphas if spacing == "karras" else logsnr_alphas)(ac, N)
        t = np.array(_sigma_to_t(((1 - a) / a).sqrt(), ac), dtype=np.int64)
    elif spacing == "quad":
        t = (np.linspace(0, np.sqrt(T * 0.8), N) ** 2).astype(np.int64)[::-1]
    elif method.solver:  # DPMSolverMultistepScheduler (and UniPC's): N + 1 points, the last dropped
        if spacing == "linspace":
            t = np.linspace(0, T - 1, N + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            t = (np.arange(0, N + 1) * (T // (N + 1))).round()[::-1][:-1].astype(np.int64) + method.offset
        else:
            t = np.arange(T, 0, -T / N).round().astype(np.int64) - 1
    else:  # DDPMScheduler, DDIMScheduler
        if spacing == "linspace":
            t = np.linspace(0, T - 1, N).round()[::-1].astype(np.int64)
        elif spacing == "leading":
            t = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.int64) + method.offset
        else:
            t = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    t = [int(v) for v in t]
    # Karras and logSNR σ_k are distinct even where their rounded t repeat (as diffusers allows);
    # a deterministic solver takes that, but the SDE's z is addressed by t and would repeat
    repeats_ok = spacing in ("karras", "logsnr") and not method.name.startswith("sde-") and t == sorted(t, reverse=True)
    if len(t) != N or (len(set(t)) != N and not repeats_ok) or min(t) < 0 or max(t) >= T:
        raise ValueError(
            f"spacing: {spacing!r} with steps={N}{f' and offset={method.offset}' if method.offset else ''} on a schedule "
            f"of T={T} gives repeated or out-of-range timesteps ({t[:6]}...): use fewer steps, another spacing, or a longer schedule"
        )
    return t


@dataclass(frozen=True, eq=False)
class Plan:
    """A checked method on a schedule: its timesteps and coefficient rows."""

    schedule: Schedule
    method: Method
    timesteps: tuple  # the model's t at step k
    prev: tuple  # the timestep step k lands on (-1: the end)
    rows: torch.Tensor  # (K, NCOEF) float64
    alphas: torch.Tensor  # (K,) float64: the ᾱ² step k's coefficients use (ᾱ²[t_k] but on a Karras σ grid, or at ᾱ = 0)
    stochastic: bool  # some step adds noise (σ > 0): a host bool, so compiled steps branch on no tensor
    eps_term: bool  # some step weighs ε̂ directly (C_EPS != 0: DDIM without clipped ε)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def build(cls, schedule: Schedule = None, method="ddpm", **options) -> "Plan":
        schedule = schedule if schedule is not None else Schedule.linear()
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a fastddpm.Schedule, got {type(schedule).__name__}")
        if isinstance(method, Method) and options:
            raise ValueError(f"options: {sorted(options)} given beside a Method, which already sets every option; put them "
                             f"in the Method, or pass the method's name")
        m = (method if isinstance(method, Method) else Method(method, **options)).checked(schedule.T)
        ts = timesteps(schedule.T, m, schedule.alphas_cumprod)
        if m.prediction == "epsilon" and schedule.zero_terminal_snr and ts[0] == schedule.T - 1:
            raise ValueError(f"prediction: an ε-prediction model is undefined at t = {schedule.T - 1} of a zero-terminal-SNR "
                             f"schedule (ᾱ = 0 there, and x̂_0 = (x - β̄ ε̂)/ᾱ divides by it); Lin et al. (2024) pair such "
                             f"schedules with v-prediction: pass prediction='v' for a v model, or start below that step "
                             f"(spacing='leading')")
        rows, a_t = _eps_rows(schedule, m, ts)
        prev = ts[1:] + [-1]
        if m.scales is not None:  # a refined plan's factors, on the ε rows (for_prediction carries them to v and x₀ models)
            rows = scaled(rows, torch.tensor(m.scales, dtype=torch.float64))
        rows = K.for_prediction(rows, m.prediction)
        rows[:, int(GUIDE)] = torch.tensor(m.guide_weights(ts), dtype=torch.float64)  # linear in the output: any parameterization
        return cls(schedule, m, tuple(ts), tuple(prev), rows, a_t, bool((rows[:, int(SIGMA)] > 0).any()),
                   bool((rows[:, int(C_EPS)] != 0).any()))

    @property
    def K(self) -> int:
        return len(self.timesteps)

    @property
    def kinds(self) -> tuple:
        """Each step's kind: "guided" (w ∉ {0, 1}: a conditional and an unconditional output,
        combined), "null" (w = 0: the unconditional output alone, exactly) or "plain" (w = 1,
        or unguided: one output as it is)."""
        return tuple("plain" if w == 1.0 else "null" if w == 0.0 else "guided" for w in self.rows[:, int(GUIDE)].tolist())

    @property
    def multistep(self) -> bool:
        return self.method.multistep

    @property
    def history(self) -> int:
        """The history ring's slots a step of this plan reads (0: history-free)."""
        return self.method.history

    @property
    def basis(self) -> str:
        """What each step stores in the ring: "x0" or "eps" (kernels.sampler_step's basis)."""
        return self.method.basis

    def check_history(self, h) -> None:
        """A multistep plan needs its history ring (zeros before the first step): (history, B, C, H, W), or
        for one slot a tensor like x; a history-free one refuses any."""
        m = self.method
        name = m.name + (f" (order {m.order}{'' if m.corrector or m.name != 'unipc' else ', no corrector'})" if m.order else "")
        if self.multistep and h is None:
            raise ValueError(f"h: {name} is a multistep solver: pass its history ring of {self.history} slot(s), "
                             f"({self.history}, B, C, H, W), zeros before the first step")
        if not self.multistep and h is not None:
            raise ValueError(f"h: {name} is history-free (its steps use no earlier output); pass h=None")
        if h is not None:
            slots = 1 if isinstance(h, torch.Tensor) and h.dim() == 4 else (h.shape[0] if isinstance(h, torch.Tensor) else None)
            if slots != self.history:
                raise ValueError(f"h: {name} keeps {self.history} earlier output(s): expected a ring of shape "
                                 f"({self.history}, B, C, H, W){' or one shaped like x' if self.history == 1 else ''}, got "
                                 f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")

    def table(self, device) -> torch.Tensor:
        """The rows as the float32 table the kernel reads, on `device` (cached)."""
        return self._on("table", device, lambda: self.rows.to(torch.float32))

    def timesteps_on(self, device) -> torch.Tensor:
        """(K,) int64 timesteps on `device` (cached): the model's t and the noise address."""
        return self._on("timesteps", device, lambda: torch.tensor(self.timesteps, dtype=torch.int64))

    def _on(self, what, device, make):
        key = (what, str(torch.device(device)))
        if key not in self._cache:
            self._cache[key] = make().to(device).contiguous()
        return self._cache[key]


def _eps_rows(schedule: Schedule, m: Method, ts: list) -> tuple:
    a_t = step_alphas(schedule.alphas_cumprod, m, ts)
    return _rows(schedule.alphas_cumprod, m, ts, ts[1:] + [-1], a_t), a_t


def eps_rows(schedule: Schedule, method: Method) -> torch.Tensor:
    """(K, NCOEF) float64: a checked method's rows for an ε model, before any learned factors (its `scales`) and
    before they are rewritten for its prediction: what fastddpm.tune learns its factors on."""
    m = method.checked(schedule.T)
    return _eps_rows(schedule, m, timesteps(schedule.T, m, schedule.alphas_cumprod))[0]


def scaled(rows: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """ε rows with each step's SCALED weights multiplied by its factors, (K, len(SCALED)); differentiable in both."""
    cols = [int(c) for c in SCALED.values()]
    factor = torch.ones_like(rows).index_copy(1, torch.tensor(cols), scales.to(rows.dtype))
    return rows * factor


def step_alphas(alphas_cumprod: torch.Tensor, m: Method, ts: list) -> torch.Tensor:
    """(K,) float64 ᾱ² of each step: alphas_cumprod[t_k]; on the Karras grid its own σ_k (the
    model still gets the rounded t_k, as in diffusers); for DPM-Solver++ at zero terminal SNR
    2**-24 instead of 0 (diffusers: "close to 0 without being 0, so the first σ is not inf")."""
    # Lu et al.'s λ = log(ᾱ/β̄) must be finite at every step the solver starts from
    if m.spacing in ("karras", "logsnr"):
        return (karras_alphas if m.spacing == "karras" else logsnr_alphas)(solver_alphas_cumprod(alphas_cumprod), m.steps)
    a = solver_alphas_cumprod(alphas_cumprod) if m.solver else alphas_cumprod.to(torch.float64)
    return a[torch.tensor(ts)]


def solver_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ᾱ² as DPM-Solver++ takes it: a terminal 0 (zero SNR) becomes 2**-24, as diffusers does."""
    a = alphas_cumprod.to(torch.float64)
    return torch.cat([a[:-1], a.new_tensor([2.0**-24])]) if float(a[-1]) == 0.0 else a


def _rows(alphas_cumprod: torch.Tensor, m: Method, ts: list, prev: list, a_t: torch.Tensor) -> torch.Tensor:
    """(K, NCOEF) float64 rows of the steps t_k -> prev_k, with a_t the steps' ᾱ² (step_alphas)."""
    if m.name == "ddpm":  # the posterior of the respaced chain (Nichol & Dhariwal), in the kernels' own builder
        return K.coef_table(alphas_cumprod, m.variance, t=ts, prev=prev, dtype=torch.float64)
    s = torch.tensor(prev)
    a_s = torch.cat([a_t[1:], a_t.new_ones(1)])  # each step lands on the next one's ᾱ²; a_{-1} = 1
    rows = torch.zeros(len(ts), int(NCOEF), dtype=torch.float64)
    rows[:, int(SQRT_AB)] = a_t.sqrt()
    rows[:, int(SQRT_1M_AB)] = (1 - a_t).sqrt()
    rows[:, int(X0_X)] = a_t.rsqrt()
    rows[:, int(X0_EPS)] = ((1 - a_t) / a_t).sqrt()
    if m.name == "ddim":  # Song et al. eq. 12 and 16
        sigma = m.eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
        room = 1 - a_s - sigma**2  # the ε direction's variance: σ² may not exceed 1 - a_s
        if bool((room < -1e-12 * (1 - a_s).clamp(min=1e-300)).any()):
            unit = ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
            ok = unit > 0
            eta_max = float(((1 - a_s)[ok].sqrt() / unit[ok]).min())
            raise ValueError(f"eta: η = {m.eta:g} makes a step's noise exceed what it may add (σ² > 1 - ᾱ²_s); this plan "
                             f"allows η <= {eta_max:.4g} (η = 1 is DDPM's ancestral variance)")
        direction = room.clamp(min=0).sqrt()  # weight of ε (rounding only)
        if m.clipped_eps:  # ε = (x_t - √a_t x̂_0) / √(1 - a_t), folded into the x̂_0 and x_t weights
            rows[:, int(C_X0)] = a_s.sqrt() - direction * a_t.sqrt() / (1 - a_t).sqrt()
            rows[:, int(C_X)] = direction / (1 - a_t).sqrt()
        else:
            rows[:, int(C_X0)] = a_s.sqrt()
            rows[:, int(C_EPS)] = direction
        rows[:, int(SIGMA)] = sigma
        return rows
    # the multistep solvers (solvers.py): x_s = c_x x_t + Σ_j c_j u_{k-j} (+ σ z), u = x̂_0 or ε̂
    coef, sigma = solver_coefficients(m, a_t)
    rows[:, int(C_X)] = coef[:, 0]
    rows[:, int(C_EPS if m.basis == "eps" else C_X0)] = coef[:, 1]
    for j, column in enumerate(HISTORY, start=1):
        rows[:, int(column)] = coef[:, 1 + j]
    rows[:, int(SIGMA)] = sigma
    return rows
