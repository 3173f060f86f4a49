"""Bad input gets a clear error naming the argument, never a silent wrong answer."""

import pytest
import torch
from helpers import SCHEDULE, triton_backend

from fastddpm import kernels as K

B, SHAPE = 2, (2, 3, 8, 8)


def _ok(device):
    x = torch.randn(SHAPE, device=device)
    t = torch.tensor([0, 5], device=device)
    return x, t, SCHEDULE.table(device=device)


def test_wrong_dtype(impl, device):
    x, t, table = _ok(device)
    with pytest.raises(TypeError, match="x0: expected dtype"):
        K.q_sample(x.to(torch.int32), t, table, seeds=0)
    with pytest.raises(TypeError, match="t: expected dtype int32 or int64"):
        K.q_sample(x, t.float(), table, seeds=0)
    with pytest.raises(TypeError, match="seeds: expected dtype int64"):
        K.q_sample(x, t, table, seeds=torch.tensor([1, 2], dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match="eps_hat: expected dtype"):
        K.reverse_step(x, x.to(torch.int64), t, table, seeds=0)
    with pytest.raises(ValueError, match="table: expected a contiguous float32"):
        K.q_sample(x, t, table.double(), seeds=0)
    with pytest.raises(ValueError, match="weights: expected a contiguous 1-D float32"):
        K.eps_mse_loss(x, t, seeds=0, weights=torch.ones(10, dtype=torch.float64, device=device))


def test_float64_only_on_the_torch_twin(device):
    x = torch.randn(SHAPE, dtype=torch.float64, device=device)
    with triton_backend(device):
        with pytest.raises(TypeError, match=r"x0: expected dtype in \(float32, bfloat16, float16\)"):
            K.q_sample(x, torch.tensor([0, 1], device=device), SCHEDULE.table(device=device), seeds=0)


def test_shape_mismatch(impl, device):
    x, t, table = _ok(device)
    with pytest.raises(ValueError, match=r"eps_hat: expected shape \(2, 3, 8, 8\)"):
        K.reverse_step(x, x[:, :2], t, table, seeds=0)
    with pytest.raises(ValueError, match=r"noise: expected shape"):
        K.q_sample(x, t, table, noise=x[:1])
    with pytest.raises(ValueError, match=r"x0: expected a 4-D"):
        K.q_sample(x[0], t, table, seeds=0)
    with pytest.raises(ValueError, match=r"t: expected shape \(2,\)"):
        K.q_sample(x, t[:1], table, seeds=0)
    with pytest.raises(ValueError, match=rf"table: expected shape \(T, {int(K.NCOEF)}\)"):
        K.q_sample(x, t, table[:, :4].contiguous(), seeds=0)
    with pytest.raises(ValueError, match=r"out_lowp: expected shape"):
        K.reverse_step(x, x, t, table, seeds=0, out_lowp=x[:, :1])


def test_seeds_of_the_wrong_length(impl, device):
    x, t, table = _ok(device)
    for fn in (
        lambda s: K.q_sample(x, t, table, seeds=s),
        lambda s: K.reverse_step(x, x, t, table, seeds=s),
        lambda s: K.eps_mse_loss(x, t, seeds=s),
    ):
        with pytest.raises(ValueError, match=r"seeds: expected shape \(2,\)"):
            fn(torch.arange(3, device=device))


def test_timestep_out_of_range(impl, device):
    x, t, table = _ok(device)
    for bad in ([0, 1000], [-1, 3]):
        tb = torch.tensor(bad, device=device)
        with pytest.raises(ValueError, match=r"t: expected every timestep in \[0, 1000\)"):
            K.q_sample(x, tb, table, seeds=0)
        with pytest.raises(ValueError, match=r"t: expected every timestep in \[0, 1000\)"):
            K.reverse_step(x, x, tb, table, seeds=0)
        with pytest.raises(ValueError, match=r"t: expected every timestep in \[0, 1000\)"):
            K.eps_mse_loss(x, tb, seeds=0, weights=torch.ones(1000, device=device))


def test_non_dense_strides(impl, device):
    x, t, table = _ok(device)
    wide = torch.randn(2, 3, 8, 16, device=device)
    for bad in (wide[..., ::2], wide[..., :8], x.transpose(2, 3), x[:1].expand(2, 3, 8, 8)):
        with pytest.raises(ValueError, match="x0: expected a dense contiguous"):
            K.q_sample(bad, t, table, seeds=0)
    with pytest.raises(ValueError, match="eps_hat: expected a dense contiguous"):
        K.eps_mse_loss(wide[..., ::2], t, seeds=0)
    with pytest.raises(ValueError, match="out: expected a dense contiguous"):
        K.reverse_step(x, x, t, table, seeds=0, out=wide[..., :8])


def test_device_mismatch(impl, device):
    x, t, table = _ok(device)
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="t: expected device"):
        K.q_sample(x, t.to(meta), table, seeds=0)
    with pytest.raises(ValueError, match="table: expected device"):
        K.q_sample(x, t, table.to(meta), seeds=0)
    with pytest.raises(ValueError, match="seeds: expected device"):
        K.q_sample(x, t, table, seeds=torch.tensor([1, 2], device=meta))
    with pytest.raises(ValueError, match="noise: expected device"):
        K.q_sample(x, t, table, noise=x.to(meta))
    with pytest.raises(ValueError, match="x0: expected a CPU or CUDA tensor"):
        K.q_sample(x.to(meta), t, table, seeds=0)


def test_noise_source_and_options(impl, device):
    x, t, table = _ok(device)
    with pytest.raises(ValueError, match="pass exactly one of seeds= .* got neither"):
        K.q_sample(x, t, table)
    with pytest.raises(ValueError, match="pass exactly one of seeds= .* got both"):
        K.reverse_step(x, x, t, table, seeds=0, noise=x)
    with pytest.raises(TypeError, match="seeds: expected an int or an int64 tensor"):
        K.q_sample(x, t, table, seeds=1.5)
    with pytest.raises(ValueError, match="reduction: expected"):
        K.eps_mse_loss(x, t, seeds=0, reduction="avg")
    with pytest.raises(ValueError, match="stream: expected an int"):
        K.q_sample(x, t, table, seeds=0, stream=-1)
    with pytest.raises(ValueError, match="variance: expected one of"):
        K.coef_table(SCHEDULE.alphas_cumprod, "fixed_large")


def test_bad_schedule_tables():
    with pytest.raises(ValueError, match=r"alphas_cumprod: expected every value in \(0, 1\)"):
        K.coef_table(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="alphas_cumprod: expected a non-increasing"):
        K.coef_table(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="alphas_cumprod: expected a 1-D"):
        K.coef_table(torch.ones(2, 2) * 0.5)


def test_cpu_backend_names():
    with pytest.raises(ValueError, match="cpu_backend: expected 'torch' or 'triton'"):
        with K.cpu_backend("cuda"):
            pass


def test_empty_batches_and_images_are_clear_errors(impl, device):
    # Decided: a kernel given no samples or no pixels is a ValueError naming the argument (an
    # empty batch has only ever come from a bug upstream: batch_size=0, an empty data set).
    table = SCHEDULE.table(device=device)
    for shape in ((0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8)):
        x = torch.zeros(shape, device=device)
        t = torch.zeros(shape[0], dtype=torch.int64, device=device)
        with pytest.raises(ValueError, match=r"x0: expected a non-empty \(B, C, H, W\) batch"):
            K.q_sample(x, t, table, seeds=0)
        with pytest.raises(ValueError, match=r"x: expected a non-empty"):
            K.reverse_step(x, x, t, table, seeds=0)
        with pytest.raises(ValueError, match=r"eps_hat: expected a non-empty"):
            K.eps_mse_loss(x, t, seeds=0)
    with pytest.raises(ValueError, match=r"shape: expected \(B, C, H, W\) of positive ints"):
        K.randn((0, 3, 8, 8), 0)


def test_seeds_that_do_not_fit_int64(impl, device):
    x, t, table = _ok(device)
    with pytest.raises(ValueError, match=r"seeds: expected s, \.\.\., s \+ 1 to fit int64"):
        K.q_sample(x, t, table, seeds=2**63 - 1)
    with pytest.raises(ValueError, match="seeds: expected s"):
        K.q_sample(x, t, table, seeds=-(2**63) - 1)
    K.q_sample(x, t, table, seeds=2**63 - 2)  # the last two int64 keys: fine


def test_flags_must_be_bools(impl, device):
    x, t, table = _ok(device)
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="clip: expected True or False"):
            K.reverse_step(x, x, t, table, seeds=0, clip=bad)


def test_sampler_step_arguments(impl, device):
    x, _, table = _ok(device)
    k = torch.tensor([0, 3], device=device)
    ts = torch.arange(table.shape[0], device=device)
    with pytest.raises(ValueError, match=r"k: expected every table row in \[0, 1000\)"):
        K.sampler_step(x, x, torch.tensor([0, 1000], device=device), table, ts)
    with pytest.raises(ValueError, match=r"timesteps: expected an int64 tensor of shape \(1000,\)"):
        K.sampler_step(x, x, k, table, ts[:5])
    with pytest.raises(ValueError, match="pass at most one of seeds="):
        K.sampler_step(x, x, k, table, ts, seeds=0, noise=x)
    with pytest.raises(ValueError, match="out_h: only a multistep step"):
        K.sampler_step(x, x, k, table, ts, out_h=x)
    with pytest.raises(ValueError, match=r"h: expected shape"):
        K.sampler_step(x, x, k, table, ts, h=x[:1])
    with pytest.raises(ValueError, match=r"nonfinite: expected an int64 tensor of shape \(2,\)"):
        K.sampler_step(x, x, k, table, ts, nonfinite=torch.zeros(2, device=device))


def test_nonfinite_flag_names_the_first_bad_timestep(impl, device):
    # The step raises a per-sample flag itself: max(flag, t) where x_s is not finite.
    x = torch.zeros(3, 3, 33, 35, device=device)
    eps = torch.zeros_like(x)
    eps[1, 2, 30, 34] = float("inf")  # one element of sample 1, in the last tile
    table = SCHEDULE.table(device=device)
    ts = torch.arange(1000, device=device)
    flags = torch.full((3,), -1, dtype=torch.int64, device=device)
    K.sampler_step(x, eps, torch.tensor([500, 500, 500], device=device), table, ts, nonfinite=flags)
    assert flags.tolist() == [-1, 500, -1]
    K.sampler_step(x, eps, torch.tensor([499, 499, 499], device=device), table, ts, nonfinite=flags)
    assert flags.tolist() == [-1, 500, -1]  # the first bad timestep stays
