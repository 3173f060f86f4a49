"""fastddpm.kernels: fused DDPM kernels with addressed noise, usable on their own.

    from fastddpm.kernels import coef_table, q_sample, eps_mse_loss, reverse_step

    table = coef_table(scheduler.alphas_cumprod, device="cuda")   # once
    x_t = q_sample(x0, t, table, seeds=seeds)                    # ε drawn in-kernel
    loss = eps_mse_loss(model(x_t, t), t, seeds=seeds)            # ε regenerated
    x = reverse_step(x, eps_hat, t, table, seeds=seeds, out=x)    # in place

This package imports torch and triton only (never the rest of fastddpm). CUDA tensors
run the Triton kernels; CPU tensors run a torch twin of the same noise contract, called
directly (its draw torch.compile'd once per process, `cpu_twin("eager")` or
FASTDDPM_CPU_TWIN=eager for plain tensor ops; traced into the caller's graph when the caller
is compiled), or the Triton kernels themselves under TRITON_INTERPRET=1 and `cpu_backend("triton")`.
The notation and the noise contract: docs/notation.md and docs/noise.md.
"""

from . import loss as _loss
from . import noise as _noise
from . import noising as _noising
from . import step as _step
from ._checks import CPU_TWINS, FLOAT_DTYPES, check_device, cpu_backend, cpu_twin, cpu_twin_name, value_checks, values_checked
from ._tile import MAX_REGISTERS, Launch, geometry
from .loss import eps_mse_loss
from .noise import philox_words, randn, randn_
from .noising import q_sample
from .philox import STREAM_FLIP, STREAM_LABEL_DROP, STREAM_NOISING, STREAM_PRIOR, STREAM_REVERSE, STREAM_TIMESTEP, STREAMS, philox
from .step import reverse_step, sampler_step
from .tables import NCOEF, PREDICTIONS, VARIANCES, coef_table, for_prediction, min_snr_weights, prediction_name

# The @triton.jit functions themselves, for tools that compile or inspect them ahead of time
# (fastddpm.aot, `python -m fastddpm.bench --static`); launch them through the functions above.
TRITON_KERNELS = {
    "q_sample": _noising._q_sample_kernel,
    "step": _step._step_kernel,
    "loss": _loss._loss_kernel,
    "randn": _noise._randn_kernel,
    "words": _noise._words_kernel,
}

__all__ = [
    "CPU_TWINS",
    "FLOAT_DTYPES",
    "Launch",
    "MAX_REGISTERS",
    "TRITON_KERNELS",
    "geometry",
    "NCOEF",
    "PREDICTIONS",
    "STREAMS",
    "STREAM_FLIP",
    "STREAM_LABEL_DROP",
    "STREAM_NOISING",
    "STREAM_PRIOR",
    "STREAM_REVERSE",
    "STREAM_TIMESTEP",
    "VARIANCES",
    "check_device",
    "coef_table",
    "cpu_backend",
    "cpu_twin",
    "cpu_twin_name",
    "eps_mse_loss",
    "for_prediction",
    "min_snr_weights",
    "philox",
    "philox_words",
    "prediction_name",
    "q_sample",
    "randn",
    "randn_",
    "reverse_step",
    "sampler_step",
    "value_checks",
    "values_checked",
]
