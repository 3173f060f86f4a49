"""fastddpm.kernels: fused DDPM kernels with addressed noise, usable on their own.

    from fastddpm.kernels import coef_table, q_sample, eps_mse_loss, reverse_step

    table = coef_table(scheduler.alphas_cumprod, device="cuda")   # once
    x_t = q_sample(x0, t, table, seeds=seeds)                    # ε drawn in-kernel
    loss = eps_mse_loss(model(x_t, t), t, seeds=seeds)            # ε regenerated
    x = reverse_step(x, eps_hat, t, table, seeds=seeds, out=x)    # in place

This package imports torch and triton only (never the rest of fastddpm). CUDA tensors
run the Triton kernels; CPU tensors run a torch twin of the same noise contract, or the
Triton kernels themselves under TRITON_INTERPRET=1 and `cpu_backend("triton")`.
"""

from ._checks import cpu_backend, value_checks
from ._philox import STREAM_NOISING, STREAM_PRIOR, STREAM_REVERSE
from .loss import eps_mse_loss
from .noise import philox_words, randn, randn_
from .noising import q_sample
from .step import reverse_step
from .tables import NCOEF, VARIANCES, coef_table

__all__ = [
    "NCOEF",
    "STREAM_NOISING",
    "STREAM_PRIOR",
    "STREAM_REVERSE",
    "VARIANCES",
    "coef_table",
    "cpu_backend",
    "eps_mse_loss",
    "philox_words",
    "q_sample",
    "randn",
    "randn_",
    "reverse_step",
    "value_checks",
]
