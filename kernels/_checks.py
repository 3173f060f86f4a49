"""Input validation and layout helpers shared by the kernel launchers.

Every check here reads only metadata (shape, dtype, device, strides), so it costs no
device round trip and traces cleanly under torch.compile. The one value check, that t
lies in [0, T), runs only where it is free or asked for (see `check_timestep_values`).
"""

import contextlib
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels store; public as K.FLOAT_DTYPES
_CPU_DTYPES = FLOAT_DTYPES + (torch.float64,)

# The Triton interpreter is chosen when triton.jit runs, i.e. when this package is
# imported, so it is read once here.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_state = {"cpu_backend": "torch", "value_checks": True, "cpu_twin": os.environ.get("FASTDDPM_CPU_TWIN", "compiled")}
CPU_TWINS = ("compiled", "eager")


@contextlib.contextmanager
def cpu_backend(name: str):
    """Route CPU tensors to "torch" (default) or to the Triton kernels, which needs the
    interpreter (TRITON_INTERPRET=1 before import). This is how tests run the real
    kernel code on a machine without a GPU."""
    if name not in ("torch", "triton"):
        raise ValueError(f"cpu_backend: expected 'torch' or 'triton', got {name!r}")
    if name == "triton" and not INTERPRET:
        raise RuntimeError(
            "cpu_backend('triton') needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing fastddpm.kernels"
        )
    old = _state["cpu_backend"]
    _state["cpu_backend"] = name
    try:
        yield
    finally:
        _state["cpu_backend"] = old


@contextlib.contextmanager
def cpu_twin(name: str):
    """The torch twin's noise on CPU tensors: "compiled" (default: torch.compile'd once per
    process, from inductor's cache after the first time on a machine) or "eager" (plain
    tensor ops, no compiler needed; also FASTDDPM_CPU_TWIN=eager). The same words either way."""
    if name not in CPU_TWINS:
        raise ValueError(f"cpu_twin: expected one of {CPU_TWINS}, got {name!r}")
    old = _state["cpu_twin"]
    _state["cpu_twin"] = name
    try:
        yield
    finally:
        _state["cpu_twin"] = old


def cpu_twin_name() -> str:
    name = _state["cpu_twin"]
    if name not in CPU_TWINS:
        raise ValueError(f"FASTDDPM_CPU_TWIN: expected one of {CPU_TWINS}, got {name!r}")
    return name


def use_triton(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" or (x.device.type == "cpu" and _state["cpu_backend"] == "triton")


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn the eager range check of t on CUDA tensors off (it waits for the GPU once per
    call) or back on. Compiled code and CUDA-graph capture never run it; the kernels
    themselves answer NaN for an out-of-range t instead of reading out of bounds."""
    old = _state["value_checks"]
    _state["value_checks"] = check_flag(enabled, "enabled")
    try:
        yield
    finally:
        _state["value_checks"] = old


def dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The torch twins compute in float64 for float64 input (gradcheck), else in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_image(x, name: str, *, allow_f64: bool = True) -> None:
    """x must be a dense 4-D (B, C, H, W) float tensor, contiguous or channels-last."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got device {x.device}")
    ok = _CPU_DTYPES if (x.device.type == "cpu" and allow_f64 and not use_triton(x)) else FLOAT_DTYPES
    if x.dtype not in ok:
        names = ", ".join(dtype_name(d) for d in ok)
        raise TypeError(f"{name}: expected dtype in ({names}) on {x.device.type}, got {x.dtype}")
    pixel_strides(x, name)


def pixel_strides(x: torch.Tensor, name: str = "x"):
    """(sB, sC, sP): element strides of batch, channel and logical pixel p = h*W + w.

    Contiguous NCHW gives sP = 1, channels-last gives sP = C. Anything else (a slice, a
    transpose, an expanded view) is rejected: the kernels never copy silently.
    """
    B, C, H, W = x.shape
    sb, sc, sh, sw = x.stride()
    sp = sw if W > 1 else (sh if H > 1 else 1)
    dense = (W == 1 or sw == sp) and (H == 1 or sh == W * sp)
    dense = dense and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
    if not dense:
        raise ValueError(
            f"{name}: expected a dense contiguous (NCHW) or channels-last (NHWC) tensor, got "
            f"shape {tuple(x.shape)} with strides {x.stride()}; call .contiguous() or "
            f".contiguous(memory_format=torch.channels_last) yourself"
        )
    return sb, sc, sp


def check_like(y, name: str, x: torch.Tensor, xname: str) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor like {xname}, got {type(y).__name__}")
    if y.shape != x.shape:
        raise ValueError(f"{name}: expected shape {tuple(x.shape)} (that of {xname}), got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"{name}: expected device {x.device} (that of {xname}), got {y.device}")
    check_image(y, name)


def check_table(table, x: torch.Tensor, ncoef) -> int:
    ncoef = int(ncoef)
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"table: expected a torch.Tensor from coef_table(), got {type(table).__name__}")
    if table.dim() != 2 or table.shape[1] != ncoef or table.shape[0] < 1:
        raise ValueError(f"table: expected shape (T, {ncoef}) from coef_table(), got {tuple(table.shape)}")
    if table.dtype != torch.float32 or not table.is_contiguous():
        raise ValueError(f"table: expected a contiguous float32 tensor, got {table.dtype} strides {table.stride()}")
    if table.device != x.device:
        raise ValueError(f"table: expected device {x.device}, got {table.device}; build it with device=")
    return table.shape[0]


def check_timesteps(t, B: int, T: int, device: torch.device, name: str = "t") -> None:
    """t: (B,) int32/int64 per-sample timesteps (or table rows) in [0, T) on `device`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected an int32/int64 tensor of shape ({B},), got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected dtype int32 or int64, got {t.dtype}")
    if t.shape != (B,):
        raise ValueError(f"{name}: expected shape ({B},) (one per sample), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")
    check_timestep_values(t, T, name)


def values_checked(x: torch.Tensor) -> bool:
    """Whether a check that reads a tensor's values runs now: always on a CPU; on CUDA (where it
    waits for the GPU) only in eager mode with value checks on; never while compiling or capturing."""
    if torch.compiler.is_compiling():
        return False
    if x.device.type == "cuda":
        return _state["value_checks"] and not torch.cuda.is_current_stream_capturing()
    return True


def check_device(device, name: str = "device") -> torch.device:
    """A torch.device that exists here: cpu, or cuda[:N] when torch sees that GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}: expected cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {device!r} asked for, but torch sees no CUDA device on this machine (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_timestep_values(t: torch.Tensor, T: int, name: str = "t") -> None:
    """Raise if any t is outside [0, T). Free on CPU; on CUDA it waits for the GPU, so it
    runs only in eager mode with value checks on, never while compiling or capturing."""
    if not values_checked(t):
        return
    bad = (t < 0) | (t >= T)
    if bool(bad.any()):
        lo, hi = int(t.min()), int(t.max())
        what = {"t": "timestep", "k": "table row"}.get(name, "value")
        raise ValueError(f"{name}: expected every {what} in [0, {T}), got values in [{lo}, {hi}]")


def check_flag(value, name: str) -> bool:
    """A true/false option must be a bool: "no" or 0.5 is an error, never a truthy True."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def make_seeds(seeds, B: int, device: torch.device) -> torch.Tensor:
    """seeds: an int s (meaning s, s+1, ..., s+B-1) or an int64 tensor of shape (B,)."""
    if isinstance(seeds, bool):
        raise TypeError("seeds: expected an int or an int64 tensor, got bool")
    if isinstance(seeds, int):
        if not -(2**63) <= seeds <= 2**63 - B:
            raise ValueError(f"seeds: expected s, ..., s + {B - 1} to fit int64 ([-2**63, 2**63)), got s = {seeds}")
        return torch.arange(B, device=device, dtype=torch.int64) + seeds  # arange(s, s + B) overflows at 2**63
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds: expected an int or an int64 tensor of shape ({B},), got {type(seeds).__name__}")
    if seeds.dtype != torch.int64:
        raise TypeError(f"seeds: expected dtype int64, got {seeds.dtype}")
    if seeds.shape != (B,):
        raise ValueError(f"seeds: expected shape ({B},) (one seed per sample), got {tuple(seeds.shape)}")
    if seeds.device != device:
        raise ValueError(f"seeds: expected device {device}, got {seeds.device}")
    return seeds


def check_noise_source(seeds, noise, x: torch.Tensor, xname: str):
    """Exactly one of seeds= (in-kernel noise) and noise= (explicit) must be given."""
    if (seeds is None) == (noise is None):
        raise ValueError(
            "pass exactly one of seeds= (noise drawn in-kernel from its address) and "
            f"noise= (an explicit tensor like {xname}); got "
            + ("both" if seeds is not None else "neither")
        )
    if noise is not None:
        check_like(noise, "noise", x, xname)
        return None
    return make_seeds(seeds, x.shape[0], x.device)


def check_stream(stream) -> int:
    if isinstance(stream, bool) or not isinstance(stream, int) or not 0 <= stream < 2**32:
        raise ValueError(f"stream: expected an int in [0, 2**32), got {stream!r}")
    return stream
