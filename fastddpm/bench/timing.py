"""Measurement helpers for `python -m fastddpm.bench`: timers, byte and FLOP counts,
the device's measured and theoretical rates, NVML facts and energy."""

import statistics
import time
from contextlib import contextmanager

import torch

from ..models.unet import forward_flops

# ------------------------------------------------------------------ byte counts


def elem_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kernel_bytes(op: str, shape, dtype: torch.dtype) -> int:
    """The bytes each fused operation must move, the numerator of every GB/s figure
    (the same for the fused kernel and the references: effective bandwidth).

    q_sample:     reads x_0, writes x_t                          2 N s
    reverse_step: reads x_t (fp32 state) and ε̂ (s), writes x_{t-1} (fp32) and the
                  model's next input (s)                         N (4 + s + 4 + s)
    loss:         forward reads ε̂; backward reads ε̂, writes ∂L/∂ε̂   3 N s
    randn:        writes the normals                             N s
    The per-sample t, seeds and table rows are O(B) and left out.
    """
    n = 1
    for d in shape:
        n *= d
    s = elem_bytes(dtype)
    if op == "q_sample":
        return 2 * n * s
    if op == "reverse_step":
        return n * (4 + s + 4 + s)
    if op == "loss":
        return 3 * n * s
    if op == "randn":
        return n * s
    raise ValueError(f"op: expected randn, q_sample, reverse_step or loss, got {op!r}")


def unet_flops(model, shape, device, dtype=torch.float32) -> int:
    """FLOPs of one forward pass on one image (C, H, W), by FlopCounterMode (models.unet.forward_flops)."""
    return forward_flops(model, shape, device, dtype)


# ------------------------------------------------------------------ timing


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, *, warmup: int = 3, reps: int = 20, min_s: float = 0.0, samples=None) -> dict:
    """Median and spread (p20, p80) in ms over `reps` calls after `warmup`. CUDA uses
    CUDA events around each call; CPU the wall clock. samples: a list to extend with the
    single times (ms), to summarize several interleaved measurements together."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_end = time.perf_counter() + min_s
    while len(times) < reps or time.perf_counter() < t_end:
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    if samples is not None:
        samples.extend(times)
    return summarize(times)


def summarize(times: list) -> dict:
    """Median and, from two repetitions on, the 20th and 80th percentiles (linear
    interpolation between order statistics, so median ∈ [p20, p80] always); None below."""
    out = {"median_ms": statistics.median(times), "p20_ms": None, "p80_ms": None, "reps": len(times)}
    if len(times) >= 2:
        q = statistics.quantiles(times, n=5, method="inclusive")
        out.update(p20_ms=q[0], p80_ms=q[3])
    return out


def host_load(window_s: float = 1.0, stat=None, own=None) -> dict:
    """How busy the other processes keep this host's CPUs, measured over `window_s` seconds
    now (while the bench itself sleeps), not the 1-minute load average, which still counts
    whatever ran just before (the pip install in the same command line). Above half a CPU
    of other work, timings here are shared and mean little. stat: a callable giving
    (busy, total) CPU jiffies (default /proc/stat); without one, the load average decides.
    own: a callable giving this process's CPU seconds (default os.times), taken out."""
    import os

    cpus = os.cpu_count() or 1
    stat = stat or _proc_stat
    own = own or (lambda: sum(os.times()[:2]))
    try:
        b0, t0 = stat()
        me0 = own()
        time.sleep(window_s)
        b1, t1 = stat()
        me1 = own()
    except OSError:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return {"cpus": cpus, "others_cpus": None, "overloaded": None, "how": "unknown"}
        return {"cpus": cpus, "others_cpus": load, "overloaded": load > cpus, "how": "1-minute load average"}
    busy_cpus = (b1 - b0) / max(t1 - t0, 1) * cpus  # CPUs busy over the window, everyone
    others = max(0.0, busy_cpus - (me1 - me0) / window_s)
    return {"cpus": cpus, "others_cpus": round(others, 2), "overloaded": others > 0.5, "how": f"{window_s:g} s of /proc/stat"}


def _proc_stat() -> tuple:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v) - idle, sum(v)


def time_kernel(fn, device, min_s: float = 0.0) -> dict:
    """Kernel timing: triton.testing.do_bench on CUDA (median, L2 flushed between
    calls), the wall clock on CPU (at least 10 calls and min_s seconds)."""
    if torch.device(device).type == "cuda":
        import triton.testing

        med, lo, hi = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": med, "p20_ms": lo, "p80_ms": hi, "reps": None}
    return time_fn(fn, device, warmup=2, reps=10, min_s=min_s)


# ------------------------------------------------------------------ device rates


def copy_bandwidth(device, nbytes: int) -> float:
    """Measured device-to-device copy rate in GB/s, counting bytes read plus written."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = time_kernel(lambda: dst.copy_(src), device)["median_ms"]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def matmul_rate(device, n: int, dtype) -> float:
    """Measured dense matmul rate in TFLOP/s on random data (never zeros)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_kernel(lambda: a @ b, device)["median_ms"]
    return 2 * n**3 / (ms * 1e-3) / 1e12


def peak_memory(fn, device) -> int:
    """Peak bytes allocated by one call of fn (CUDA only; None elsewhere)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ------------------------------------------------------------------ NVML


class NVML:
    """Device facts and the energy counter through nvidia-ml-py; inert without it."""

    def __init__(self, device):
        self.handle = None
        if torch.device(device).type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception as e:  # no library, no driver access: say so in the report
            self.error = f"{type(e).__name__}: {e}"

    def facts(self) -> dict:
        if self.handle is None:
            return {"nvml": getattr(self, "error", "not a CUDA device")}
        nv, h = self.nv, self.handle
        out = {"name": nv.nvmlDeviceGetName(h), "driver": nv.nvmlSystemGetDriverVersion()}
        out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in out.items()}
        for key, call in (
            ("mem_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("sm_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
            ("bus_width_bits", lambda: nv.nvmlDeviceGetMemoryBusWidth(h)),
            ("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3),
        ):
            try:
                out[key] = call()
            except Exception as e:
                out[key] = f"unavailable ({type(e).__name__})"
        if isinstance(out.get("mem_clock_max_mhz"), int) and isinstance(out.get("bus_width_bits"), int):
            # double data rate: two transfers per clock on each bit of the bus
            out["theoretical_bandwidth_gbs"] = 2 * out["mem_clock_max_mhz"] * 1e6 * out["bus_width_bits"] / 8 / 1e9
        return out

    def energy_mj(self):
        if self.handle is None:
            return None
        try:
            return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:
            return None

    @contextmanager
    def energy(self, result: dict):
        """Adds joules and mean watts to `result` for the block (None where NVML can't)."""
        e0, t0 = self.energy_mj(), time.perf_counter()
        yield
        e1, dt = self.energy_mj(), time.perf_counter() - t0
        if e0 is not None and e1 is not None:
            result["energy_j"] = (e1 - e0) / 1e3
            result["mean_power_w"] = result["energy_j"] / dt
            result["energy_window_s"] = dt
