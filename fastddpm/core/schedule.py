"""Noise schedules, tabulated in float64, in both notations (docs/notation.md).

    seed notation        Ho et al. / diffusers
    β_t²           =     β_t            betas
    α_t²           =     α_t = 1 - β_t  alphas
    ᾱ_t²           =     ᾱ_t            alphas_cumprod
    ᾱ_t            =     √ᾱ_t           sqrt_alphas_cumprod
    β̄_t            =     √(1 - ᾱ_t)     sqrt_one_minus_alphas_cumprod

Index t ∈ [0, T): index 0 is the least noisy step (the source's t = 1), as in diffusers.
"""

import math
from dataclasses import dataclass, field

import torch

from .. import kernels as K
from ..kernels import coef_table

TABLES = ("betas", "alphas", "alphas_cumprod", "alpha", "beta", "alpha_bar", "beta_bar")  # Schedule.on's names (docs/notation.md)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A DDPM noise schedule, defined by its variances β_t (diffusers' `betas`).

    Build with `Schedule.linear()`, `Schedule.cosine()` or `Schedule.from_betas(betas)`.
    Tables are float64 CPU tensors of length T; `table(variance, device)` gives the
    float32 coefficient table the kernels read, cached per (variance, device).
    """

    betas: torch.Tensor  # (T,) float64: diffusers' β_t, the variance added at step t
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        b = self.betas
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"betas: expected a torch.Tensor, got {type(b).__name__}")
        if b.dim() != 1 or b.numel() < 1:
            raise ValueError(f"betas: expected a 1-D tensor of length T >= 1, got shape {tuple(b.shape)}")
        if b.dtype != torch.float64 or b.device.type != "cpu":
            raise ValueError("betas: expected a float64 CPU tensor; use Schedule.from_betas() to convert")
        if not bool(torch.isfinite(b).all()) or not bool(((b > 0) & (b < 1)).all()):
            if not (bool(((b[:-1] > 0) & (b[:-1] < 1)).all()) and float(b[-1]) == 1.0 and b.numel() > 1):
                raise ValueError("betas: expected every variance in (0, 1) (1 allowed at the last step: zero terminal SNR)")
        ac = self.alphas_cumprod
        if not bool((ac[:-1] > 0).all()) or not (ac[-1] > 0 or self.zero_terminal_snr):
            raise ValueError(f"betas: alphas_cumprod underflows to 0 at t = {int((ac > 0).sum())}: x_0 is gone long before "
                             f"the last step; use smaller variances or fewer steps")
        table = coef_table(ac)  # what the kernels will read: it must be finite in float32
        if self.zero_terminal_snr:  # x̂_0 from ε is undefined at ᾱ = 0: only a v or x₀ model samples from there
            table = table[:-1]
        if not bool(torch.isfinite(table).all()):
            raise ValueError(f"betas: the schedule's float32 coefficient table is not finite (alphas_cumprod falls to "
                             f"{float(self.alphas_cumprod.min()):.3g}, and 1/√ᾱ overflows float32); use a gentler schedule")

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        """From any sequence of variances β_t (e.g. a diffusers scheduler's `betas`)."""
        try:
            b = torch.as_tensor(betas).detach()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"betas: expected a sequence of real numbers, got {type(betas).__name__}") from e
        if b.is_complex() or not (b.is_floating_point() or b.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"betas: expected real variances, got dtype {b.dtype}")
        return cls(b.to("cpu", torch.float64).clone())

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        """Ho et al. (2020): variances β_t evenly spaced from beta_start to beta_end."""
        _check_T(T)
        _number(beta_start, "beta_start"), _number(beta_end, "beta_end")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"beta_start, beta_end: expected 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> "Schedule":
        """Standard deviations √β_t evenly spaced (diffusers' and Stable Diffusion's scaled_linear)."""
        _check_T(T)
        _number(beta_start, "beta_start"), _number(beta_end, "beta_end")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"beta_start, beta_end: expected 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return cls(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)

    def rescale_zero_snr(self) -> "Schedule":
        """Zero terminal SNR (Lin et al. 2024, Algorithm 1): √ᾱ shifted so that the last step's
        is 0 and scaled so that the first step's is unchanged; ᾱ_{T-1} = 0, so x_{T-1} holds no
        signal and ε-prediction is undefined there (use v). diffusers' rescale_betas_zero_snr."""
        ab = self.alphas_cumprod.sqrt()
        ab = (ab - ab[-1]) * (ab[0] / (ab[0] - ab[-1]))
        ac = ab**2
        return Schedule(1 - torch.cat([ac[:1], ac[1:] / ac[:-1]]))

    @property
    def zero_terminal_snr(self) -> bool:
        """ᾱ = 0 at the last step (Lin et al. 2024)."""
        return float(self.betas[-1]) == 1.0

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """Nichol & Dhariwal (2021): ᾱ_t² = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) π/2),
        variances β_t = 1 - f(t+1)/f(t) clipped at max_beta (diffusers' squaredcos_cap_v2)."""
        _check_T(T)
        if not 0 <= _number(s, "s") < 1:
            raise ValueError(f"s: expected the offset in [0, 1) (Nichol & Dhariwal use 0.008), got {s!r}")
        if not 0 < _number(max_beta, "max_beta") < 1:
            raise ValueError(f"max_beta: expected a variance cap in (0, 1) (0.999 is usual), got {max_beta!r}")
        i = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((i + s) / (1 + s) * math.pi / 2) ** 2
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta))

    @property
    def T(self) -> int:
        return self.betas.numel()

    def __repr__(self) -> str:
        b, ac = self.betas, self.alphas_cumprod
        return (f"Schedule(T={self.T}, betas {float(b[0]):.3g}..{float(b[-1]):.3g}, alphas_cumprod {float(ac[0]):.6g}.."
                f"{float(ac[-1]):.3g}{', zero terminal SNR' if self.zero_terminal_snr else ''})")

    # diffusers' names (variances)
    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    # seed notation (standard deviations)
    @property
    def alpha(self) -> torch.Tensor:
        """α_t = √(1 - β_t): the signal kept by one step, α_t² + β_t² = 1."""
        return self.alphas.sqrt()

    @property
    def beta(self) -> torch.Tensor:
        """β_t: the noise standard deviation added by one step."""
        return self.betas.sqrt()

    @property
    def alpha_bar(self) -> torch.Tensor:
        """ᾱ_t = α_0 ⋯ α_t: x_t = ᾱ_t x_0 + β̄_t ε."""
        return self.alphas_cumprod.sqrt()

    @property
    def beta_bar(self) -> torch.Tensor:
        """β̄_t = √(1 - ᾱ_t²)."""
        return (1.0 - self.alphas_cumprod).sqrt()

    def on(self, name: str, device) -> torch.Tensor:
        """A float64 table (e.g. "alpha_bar") on `device`, cached, so the eager
        reference path indexes it without a host-to-device copy per call."""
        if name not in TABLES:
            raise ValueError(f"name: expected one of the schedule's tables {TABLES}, got {name!r}")
        device = K.check_device(device)
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device)
        return self._cache[key]

    def table(self, variance: str = "large", device=None) -> torch.Tensor:
        """The (T, NCOEF) float32 coefficient table the kernels read (cached)."""
        device = K.check_device(device if device is not None else "cpu")
        key = (variance, str(device))
        if key not in self._cache:
            self._cache[key] = coef_table(self.alphas_cumprod, variance, device=device)
        return self._cache[key]


def _number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


def _check_T(T) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T: expected a positive int number of timesteps, got {T!r}")
