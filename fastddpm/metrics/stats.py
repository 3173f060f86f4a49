"""Sample-quality metrics in a feature space: Fréchet distance, KID, precision/recall/density/coverage.

Written here rather than taken from torchmetrics or `prdc`: torchmetrics' FID takes the
square root through the eigenvalues of the non-symmetric product Σ1 Σ2 and its KID keeps
every feature of both sets; `prdc` is four functions over sklearn. Here the Fréchet
distance streams float64 sums (the images are never held at once) and takes its square
root through the symmetric eigendecomposition; the tests check it against
scipy.linalg.sqrtm and against the closed form for Gaussians.
"""

from dataclasses import dataclass

import numpy as np
import torch


class Moments:
    """Streaming float64 sums of features and their outer products: n, Σx, Σxxᵀ."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, f: torch.Tensor) -> "Moments":
        f = f.detach().to("cpu", torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    def mean_cov(self) -> tuple:
        if self.n < 2:
            raise ValueError(f"samples: need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, (cov + cov.T) / 2

    def state(self) -> dict:
        return {"n": torch.tensor(self.n), "sum": self.sum, "outer": self.outer}

    @classmethod
    def from_state(cls, s: dict) -> "Moments":
        m = cls(s["sum"].numel())
        m.n, m.sum, m.outer = int(s["n"]), s["sum"].double(), s["outer"].double()
        return m


def feature_pair(x, y, names=("x", "y")) -> tuple:
    """Two feature sets as float64 (N, D) tensors of one D (NumPy arrays taken); images, a
    vector or sets of another width are a clear error: these functions compare features, and
    fastddpm.metrics.evaluate turns images into them."""
    out = []
    for v, name in zip((x, y), names):
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor) or not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name}: expected a tensor or NumPy array of feature vectors (N, D), got "
                            f"{v.dtype if isinstance(v, torch.Tensor) else type(v).__name__}")
        if v.dim() != 2:
            raise ValueError(f"{name}: expected feature vectors (N, D), got shape {tuple(v.shape)} (images go through "
                             f"fastddpm.metrics.evaluate, which computes their features)")
        out.append(v.detach().to("cpu", torch.float64))
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"{names[1]}: expected features of the width of {names[0]}'s ({out[0].shape[1]}), got {out[1].shape[1]}")
    return tuple(out)


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from
    rounding are taken as 0)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet(mu1, cov1, mu2, cov2) -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½ (Dowson & Landau 1982), in float64.
    tr (Σ1 Σ2)^½ is taken through the symmetric matrix Σ1^½ Σ2 Σ1^½, which has the same
    eigenvalues as Σ1 Σ2 but a real, stable eigendecomposition."""
    mu1, mu2, cov1, cov2 = (x.double() for x in (mu1, mu2, cov1, cov2))
    s1 = sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt)


def frechet_moments(a: Moments, b: Moments) -> float:
    return frechet(*a.mean_cov(), *b.mean_cov())


def kid(x: torch.Tensor, y: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² with the cubic
    polynomial kernel k(a, b) = (aᵀb / d + 1)³, over `subsets` random subsets of
    min(subset_size, |x|, |y|) features each; (mean, std) over the subsets."""
    x, y = feature_pair(x, y)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"samples: KID needs at least 2 feature vectors in each set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=g)[:m]]
        b = y[torch.randperm(len(y), generator=g)[:m]]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        vals.append(float(off - 2 * kxy.mean()))
    t = torch.tensor(vals, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if subsets > 1 else 0.0


def _kth_neighbour_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    out = []
    for i in range(0, len(x), chunk):
        dist = torch.cdist(x[i : i + chunk], x)
        out.append(dist.kthvalue(k + 1, dim=1).values)  # the 0th neighbour is the point itself
    return torch.cat(out)


def _within(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """(Q, P) bool: query q lies inside the ball of point p."""
    return torch.cat([torch.cdist(queries[i : i + chunk], points) <= radii[None, :] for i in range(0, len(queries), chunk)])


@dataclass
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5, real_radii: torch.Tensor = None) -> PRDC:
    """Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
    2020), with k-nearest-neighbour balls in feature space.

    precision: the share of generated samples inside some real sample's ball;
    recall:    the share of real samples inside some generated sample's ball;
    density:   how many real balls a generated sample lies in, on average, over k;
    coverage:  the share of real samples whose ball holds a generated sample.
    real_radii: the real set's k-NN radii, if already known (they depend on the real set only)."""
    real, fake = feature_pair(real, fake, ("real", "fake"))
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"samples: precision/recall need more than k={k} feature vectors in each set, got {len(real)} and {len(fake)}")
    r_real = _kth_neighbour_radius(real, k) if real_radii is None else real_radii.double()
    r_fake = _kth_neighbour_radius(fake, k)
    fake_in_real = _within(fake, real, r_real)  # (F, R)
    real_in_fake = _within(real, fake, r_fake)  # (R, F)
    return PRDC(
        precision=float(fake_in_real.any(1).double().mean()),
        recall=float(real_in_fake.any(1).double().mean()),
        density=float(fake_in_real.sum(1).double().mean() / k),
        coverage=float(fake_in_real.any(0).double().mean()),
    )


def check_count(n: int, dim: int) -> None:
    if n <= dim:
        raise ValueError(f"samples: {n} images give a singular {dim}x{dim} feature covariance; the Fréchet distance "
                         f"needs more samples than the feature dimension ({dim})")

