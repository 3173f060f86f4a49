"""Ancestral DDPM sampling, fast: one compiled, CUDA-graphed step replayed T times.

    images = Sampler(model).run(batch=1024, seed=0)     # (1024, C, H, W) in [-1, 1]

The step is the U-Net plus the fused reverse update, which writes the fp32 state x_t in
place and, in the same pass, the bf16 channels-last copy the next U-Net call reads.
The timestep and the seeds live in device buffers (the step decrements t itself), so a
replay needs nothing from the host, nothing waits for the GPU inside the loop, and
nothing recompiles across timesteps. Image k of run(batch=B, seed=s) depends only on
the model and the seed s + k: its prior and every z are addressed by that seed.
"""

import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import kernels as K
from .schedule import Schedule


def model_output(out) -> torch.Tensor:
    """A model's ε̂: the tensor itself, or diffusers' output object's `.sample`."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model: expected it to return a tensor or an object with .sample, got {type(out).__name__}")


def image_shape(model, shape) -> tuple:
    """(C, H, W) from shape= or from the model's config (sample_size, in_channels)."""
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape: expected (C, H, W) with positive sizes, got {shape}")
        return shape
    cfg = getattr(model, "config", None)
    get = (cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)) if cfg is not None else None
    size = get("sample_size") if get else None
    chans = get("in_channels") if get else None
    if size is None or chans is None:
        raise ValueError("shape: the model has no config with sample_size and in_channels; pass shape=(C, H, W)")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(chans), int(h), int(w))


@dataclass
class _Buffers:
    """The device state of one micro-batch size: everything a replay reads or writes."""

    x: torch.Tensor  # (m, C, H, W) fp32 x_t, updated in place
    x_in: torch.Tensor  # (m, C, H, W) the model's input: x_t in the model's dtype/layout (may be x)
    t: torch.Tensor  # (m,) int64, decremented by the step itself
    seeds: torch.Tensor  # (m,) int64
    first_bad: torch.Tensor  # () int64: the first t whose state went non-finite, -1 if none
    step: object = None  # callable running one step on these buffers
    graph: Optional[torch.cuda.CUDAGraph] = None


class Sampler:
    """DDPM ancestral sampler for any ε-prediction model `model(x, t)`.

    model:         a callable (x (B, C, H, W), t (B,) int64) -> ε̂, or returning an object
                   with `.sample` (a diffusers UNet2DModel). An nn.Module is run in eval
                   mode; if it must change dtype or layout, a copy is made, never the
                   caller's model changed.
    schedule:      default Schedule.linear() (T = 1000).
    variance:      "large" (σ_t = β_t), "small" (posterior), "none".
    clip:          clamp the predicted x̂_0 to [-1, 1] and take the posterior mean.
    dtype:         the model's compute dtype: default bf16 on CUDA, fp32 on CPU. The
                   state x_t stays fp32.
    channels_last: feed the model channels-last input (and convert its weights).
    compile:       torch.compile(fullgraph=True) the step.
    cuda_graph:    capture the step in a CUDA graph and replay it (CUDA only).
    max_batch:     the largest micro-batch (default 1024); larger runs are split.
    """

    def __init__(
        self,
        model,
        schedule: Optional[Schedule] = None,
        *,
        variance: str = "large",
        clip: bool = False,
        dtype: Optional[torch.dtype] = None,
        channels_last: bool = True,
        compile: bool = True,
        cuda_graph: bool = True,
        shape=None,
        device=None,
        max_batch: int = 1024,
        progress: bool = True,
    ):
        if not callable(model):
            raise TypeError(f"model: expected a callable model(x, t), got {type(model).__name__}")
        if variance not in K.VARIANCES:
            raise ValueError(f"variance: expected one of {K.VARIANCES}, got {variance!r}")
        self.schedule = schedule if schedule is not None else Schedule.linear()
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule: expected a fastddpm.Schedule, got {type(self.schedule).__name__}")
        self.shape = image_shape(model, shape)
        params = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        self.device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
        if params is not None and params.device != self.device:
            raise ValueError(f"device: the model's parameters are on {params.device}, not {self.device}")
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.dtype not in K._checks.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32, bfloat16 or float16, got {self.dtype}")
        self.variance, self.clip = variance, bool(clip)
        self.channels_last = bool(channels_last)
        self.compile = bool(compile)
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.max_batch = _positive_int(max_batch, "max_batch")
        self.progress = progress
        self.model = self._prepare_model(model, params)
        self.table = self.schedule.table(variance, self.device)
        self._buffers = {}  # micro-batch size -> _Buffers
        self.stats = {}  # timings of the last run, for the benchmark

    def _prepare_model(self, model, params):
        if params is None:
            return model
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        needs_copy = params.dtype != self.dtype or (
            self.channels_last and any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
        )
        if needs_copy:
            model = copy.deepcopy(model).to(dtype=self.dtype, memory_format=fmt)
        return model.eval().requires_grad_(False) if needs_copy else model

    # ------------------------------------------------------------------ one step
    def _step(self, b: _Buffers) -> None:
        eps = model_output(self.model(b.x_in, b.t))
        if eps.shape != b.x.shape:
            raise ValueError(f"model: returned shape {tuple(eps.shape)}, expected {tuple(b.x.shape)} (ε̂ for x_t)")
        if not eps.is_floating_point():
            raise TypeError(f"model: returned dtype {eps.dtype}, expected a floating-point ε̂")
        lowp = None if b.x_in is b.x else b.x_in
        K.reverse_step(b.x, eps, b.t, self.table, seeds=b.seeds, clip=self.clip, out=b.x, out_lowp=lowp)
        bad = ~torch.isfinite(b.x).all()
        b.first_bad.copy_(torch.where((b.first_bad < 0) & bad, b.t[0], b.first_bad))
        b.t.sub_(1)

    def _buffers_for(self, m: int) -> _Buffers:
        if m in self._buffers:
            return self._buffers[m]
        C, H, W = self.shape
        dev = self.device
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.empty((m, C, H, W), device=dev, dtype=torch.float32, memory_format=fmt)
        same = self.dtype == torch.float32
        x_in = x if same else torch.empty((m, C, H, W), device=dev, dtype=self.dtype, memory_format=fmt)
        b = _Buffers(
            x=x,
            x_in=x_in,
            t=torch.empty(m, device=dev, dtype=torch.int64),
            seeds=torch.arange(m, device=dev, dtype=torch.int64),
            first_bad=torch.full((), -1, device=dev, dtype=torch.int64),
        )
        t0 = time.perf_counter()
        step = (lambda: self._step(b))
        if self.compile:
            compiled = torch.compile(self._step, fullgraph=True, dynamic=False)
            step = (lambda: compiled(b))
        self._reset(b)
        if self.cuda_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # compile, autotune and allocate before capture
                    step()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            b.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(b.graph):
                step()
            torch.cuda.synchronize()
            self.stats["capture_s"] = time.perf_counter() - t1
            b.step = b.graph.replay
        else:
            step()  # first step: compile (if asked) and allocate, reported apart from sampling
            b.step = step
        self.stats["warmup_s"] = time.perf_counter() - t0 - self.stats["capture_s"]
        self._buffers[m] = b
        return b

    def _reset(self, b: _Buffers) -> None:
        """Prior x_T ~ N(0, I) addressed by (seed, STREAM_PRIOR, 0), t = T - 1."""
        zeros = torch.zeros_like(b.t)
        K.randn_(b.x, b.seeds, zeros, K.STREAM_PRIOR)
        if b.x_in is not b.x:
            b.x_in.copy_(b.x)
        b.t.fill_(self.schedule.T - 1)
        b.first_bad.fill_(-1)

    # ------------------------------------------------------------------ the run
    @torch.inference_mode()
    def run(self, batch: Optional[int] = None, seed: int = 0, *, seeds: Optional[torch.Tensor] = None,
            max_batch: Optional[int] = None, steps: Optional[int] = None, progress: Optional[bool] = None) -> torch.Tensor:
        """Draw images: (B, C, H, W) float32 on the sampler's device, in the model's range.

        batch/seed: images seed, seed+1, ..., seed+batch-1 (default batch 1024); or
        seeds:      an explicit int64 tensor (B,) of per-image seeds.
        steps:      run only the first `steps` reverse steps (for tests and benchmarks):
                    the result is then x_{T-steps}, not an image.
        """
        seeds = self._seeds(batch, seed, seeds)
        B, T = seeds.numel(), self.schedule.T
        steps = T if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"steps: expected an int in [1, {T}], got {steps!r}")
        mb = _positive_int(max_batch if max_batch is not None else self.max_batch, "max_batch")
        self.stats = {"warmup_s": 0.0, "capture_s": 0.0}
        chunks = math.ceil(B / mb)
        m = math.ceil(B / chunks)  # balanced micro-batches: at most chunks-1 padded slots
        was_training = getattr(self.model, "training", False)
        if was_training:
            self.model.eval()
        try:
            b = self._buffers_for(m)
            out = torch.empty((B, *self.shape), device=self.device, dtype=torch.float32)
            bar = _Progress(steps, chunks, m, self.device, progress if progress is not None else self.progress)
            bad = []
            t0 = time.perf_counter()
            for c in range(chunks):
                lo, n = c * m, min(m, B - c * m)
                chunk = seeds[lo : lo + n]
                b.seeds[:n].copy_(chunk)
                if n < m:  # padding slots: seeds past the chunk's last, results discarded
                    b.seeds[n:].copy_(chunk[-1] + 1 + torch.arange(m - n, device=self.device))
                self._reset(b)
                for i in range(steps):
                    b.step()
                    bar.update(c * steps + i + 1)
                out[lo : lo + n].copy_(b.x[:n])
                bad.append(b.first_bad.clone())
            first_bad = torch.stack(bad).cpu()  # the one wait for the GPU in a run
            self.stats.update(sample_s=time.perf_counter() - t0, steps=steps * chunks, micro_batch=m, chunks=chunks)
            self.stats["ms_per_step"] = 1e3 * self.stats["sample_s"] / (steps * chunks)
            bar.close()
        finally:
            if was_training:
                self.model.train()
        for c, t_bad in enumerate(first_bad.tolist()):
            if t_bad >= 0:
                err = FloatingPointError(
                    f"model: non-finite values first appeared at timestep t={t_bad} "
                    f"(step {T - t_bad} of {T}) in the micro-batch of seeds starting {int(seeds[c * m])}"
                )
                err.images = out  # the finished run, not lost
                raise err
        return out

    def _seeds(self, batch, seed, seeds) -> torch.Tensor:
        if seeds is not None:
            if batch is not None and batch != seeds.numel():
                raise ValueError(f"batch: {batch} disagrees with len(seeds) = {seeds.numel()}")
            if not isinstance(seeds, torch.Tensor) or seeds.dtype != torch.int64 or seeds.dim() != 1 or seeds.numel() < 1:
                raise ValueError("seeds: expected a non-empty 1-D int64 tensor of per-image seeds")
            return seeds.to(self.device)
        batch = _positive_int(1024 if batch is None else batch, "batch")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        return torch.arange(seed, seed + batch, device=self.device, dtype=torch.int64)


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


class _Progress:
    """Steps done and images/s on stderr, at most twice a second. On CUDA it reads CUDA
    events (query, never synchronize), so it reports finished steps, not queued ones."""

    def __init__(self, steps: int, chunks: int, micro_batch: int, device, enabled: bool):
        self.steps, self.total, self.m = steps, steps * chunks, micro_batch
        self.enabled = bool(enabled)
        self.cuda = device.type == "cuda"
        self.t0 = self.last = time.perf_counter()
        self.pending = []  # (step, event) not yet seen finished
        self.done = 0

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        if self.cuda:
            if step % 10 == 0 or step == self.total:
                ev = torch.cuda.Event()
                ev.record()
                self.pending.append((step, ev))
            while self.pending and self.pending[0][1].query():
                self.done = self.pending.pop(0)[0]
        else:
            self.done = step
        now = time.perf_counter()
        if now - self.last >= 0.5:
            self.last = now
            self._print(now)

    def _print(self, now) -> None:
        dt = max(now - self.t0, 1e-9)
        images = self.done / self.steps * self.m  # finished images, counting part-done ones pro rata
        sys.stderr.write(f"\rsampling: step {self.done}/{self.total}  {self.done / dt:.1f} steps/s  {images / dt:.1f} images/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            self.done = self.total
            self._print(time.perf_counter())
            sys.stderr.write("\n")
