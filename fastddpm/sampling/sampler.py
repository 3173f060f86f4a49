"""Sampling, fast: one compiled, CUDA-graphed step replayed for every step of a plan.

    images = Sampler(model).run(batch=1024, seed=0)                     # DDPM, all T steps
    images = Sampler(model, method="ddim", steps=50).run(batch=1024)    # DDIM(η = 0), 50 steps
    images = Sampler(model, method="dpm++2m", steps=20).run(batch=1024) # DPM-Solver++(2M)

The step is the model plus one fused kernel (`kernels.sampler_step`), which reads row k of
the plan's coefficient table, writes the fp32 state x in place and, in the same pass, the
bf16 channels-last copy the next model call reads (and, for multistep solvers, the new
history), and raises a per-sample flag if the state stops being finite. The step index,
the seeds and the flags live in device buffers (the step advances k itself), so a replay
needs nothing from the host, nothing waits for the GPU inside the loop, and nothing
recompiles across steps. Image k of run(batch=B, seed=s) depends only on the model, the
plan and the seed s + k: its prior and every z are addressed by that seed.
"""

import copy
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import kernels as K
from ..core.outputs import checked_output, config_get, image_shape, label_tensor, num_classes, seed_tensor
from ..core import conventions, tuned
from ..core.plan import Plan
from ..core.schedule import Schedule


@dataclass
class _Buffers:
    """The device state of one micro-batch size: everything a replay reads or writes."""

    x: torch.Tensor  # (m, C, H, W) fp32 state x_t, updated in place
    x_in: torch.Tensor  # (m, C, H, W) the model's input: x_t in the model's dtype/layout (may be x)
    k: torch.Tensor  # (m,) int64 step index, advanced by the step itself
    seeds: torch.Tensor  # (m,) int64
    flags: torch.Tensor  # (m,) int64: the first t whose state went non-finite, -1 if none
    h: Optional[torch.Tensor]  # (NH, m, C, H, W) fp32 history ring of a multistep solver: what the last NH steps stored
    both: Optional[torch.Tensor] = None  # (2m,) int64 a class-conditional model's labels, then m null labels
    labels: Optional[torch.Tensor] = None  # both[:m]: the class labels
    null: Optional[torch.Tensor] = None  # both[m:]: the null label, for the unconditional half
    steps: dict = None  # a step's kind (Sampler.kinds) -> callable running one step of that kind on these buffers
    graphs: list = None  # the CUDA graphs behind them (kept alive)


class Sampler:
    """A sampler for any diffusion model `model(x, t)` predicting ε, v or x_0.

    model:         a callable (x (B, C, H, W), t (B,) int64) -> its prediction, or returning
                   an object with `.sample` (a diffusers UNet2DModel). An nn.Module is run in
                   eval mode; if it must change dtype or layout, a copy is made, never the
                   caller's model changed. A model from `fastddpm.pretrained.load_model`
                   carries its conventions (`model.conventions`: prediction, variance, clip,
                   spacing, steps_offset): every option left None takes the model's value;
                   `sampler.conventions` says which value was used and where it came from.
    schedule:      default Schedule.linear() (T = 1000).
    method:        "ddpm" (default: ancestral, all T steps), "ddim", "dpm++2m", "sde-dpm++2m",
                   "dpm++3m", "sde-dpm++3m" (DPM-Solver++, Lu et al. 2022), "unipc" (UniPC, Zhao et
                   al. 2023: its corrector folded into the next step, one model call a step), "ipndm"
                   (iPNDM, Zhang & Chen 2023). Multistep solvers keep a history ring on the device.
    steps:         model evaluations (default T for ddpm, 50 for ddim, 20 for the multistep solvers).
    spacing:       "trailing" (default), "leading", "linspace", "quad": which timesteps; the multistep
                   solvers also "karras" (Karras et al.'s σ grid) and "logsnr" (uniform in λ).
    order:         unipc 1-3 (default 2), ipndm 1-4 (default 2; 4 is the paper's, for grids even in σ/α).
    solver_type:   unipc: "bh2" (default) or "bh1" (Zhao et al.: bh1 for unconditional sampling
                   under 10 steps). corrector: unipc: UniC on (default) or off. disable_corrector:
                   unipc: steps i whose successor is left uncorrected (diffusers'). lower_order_final:
                   dpm++3m and unipc: lower orders in the last steps (default True, diffusers').
    eta:           ddim only: 0 deterministic, 1 the ancestral variance.
    variance:      ddpm only: "large" (σ² = β', the default), "small" (the posterior), "none"; a
                   learned-Σ model (conventions.learned_sigma: its output is 2C channels, the
                   prediction and v) samples ddpm with its own ("learned", the only choice), the
                   other methods with the prediction half alone.
    clip:          ddpm/ddim: clamp the predicted x̂_0 to [-1, 1] (default off).
    clipped_eps:   ddim with clip: recompute ε from the clipped x̂_0 (default: the model's, else off).
    prediction:    what the model predicts: "epsilon" (default), "v" or "sample" (x_0);
                   diffusers' "v_prediction" accepted. The same fused step serves all three.
    guidance:      classifier-free guidance weight w for a class-conditional model (Ho &
                   Salimans 2022: m = m(x, ∅) + w (m(x, c) − m(x, ∅)); 0 unconditional, 1 plain
                   conditional). A guided step calls the model once on a 2B batch (labels, then
                   the null label) and the fused kernel combines the halves in registers; a
                   step with w = 0 calls it on B images with the null label only (and with
                   w = 0 on every step, run() needs no labels).
    guidance_interval: (t_lo, t_hi): guide only for t_lo < t <= t_hi (Kynkäänniemi et al. 2024);
                   the other steps call the model on B images with their labels (w = 1).
    dtype:         the model's compute dtype: default bf16 on CUDA, fp32 on CPU. The
                   state x_t stays fp32.
    channels_last: feed the model channels-last input (and convert its weights).
    compile:       torch.compile(fullgraph=True) the step; default on CUDA only. On a CPU the
                   compiled step takes the update in (Inductor fuses it with the model's
                   output): it pays for small models and long runs (the bench's small U-Net:
                   ~1.5x faster a step), after a compile of ~35 s the first time on a machine
                   and ~5 s from Inductor's cache; a short run does not gain it back.
    cuda_graph:    capture the step in a CUDA graph and replay it (CUDA only).
    max_batch:     the largest micro-batch (default 1024); larger runs are split.
    timesteps:     a grid of the method's own instead of the spacing's (descending ints in [0, T)).
    plan:          a tuned plan (python -m fastddpm.tune: its file or dict, or for a shipped model
                   loaded by load_model the name of a plan shipped beside it, e.g. "ipndm2-5"):
                   the method, its options and its searched timesteps, refused if made for
                   another schedule, prediction or model (the model's hash: a fastddpm UNet's
                   parameters, or what load_model attached to a model of another kind; one
                   built by hand is checked on schedule and prediction only); `method`, `steps` and
                   the grid options are then not given (or given as the plan has them).
    scales:        learned factors on each step's weights ((K, 6): x̂_0, x_t, ε̂, h_1, h_2, h_3;
                   core.plan.SCALED), as a refined plan (tune --learn) sets them; deterministic methods.
    """

    def __init__(
        self,
        model,
        schedule: Optional[Schedule] = None,
        *,
        method: str = "ddpm",
        steps: Optional[int] = None,
        spacing: Optional[str] = None,
        eta: float = 0.0,
        variance: Optional[str] = None,
        clip: Optional[bool] = None,
        clipped_eps: bool = None,
        prediction: Optional[str] = None,
        guidance: Optional[float] = None,
        guidance_interval: Optional[tuple] = None,
        order: Optional[int] = None,
        solver_type: Optional[str] = None,
        corrector: Optional[bool] = None,
        disable_corrector=None,
        lower_order_final: Optional[bool] = None,
        dtype: Optional[torch.dtype] = None,
        channels_last: bool = True,
        compile: Optional[bool] = None,
        cuda_graph: bool = True,
        shape=None,
        device=None,
        max_batch: int = 1024,
        progress: bool = True,
        timesteps=None,
        plan=None,
        scales=None,
    ):
        if not callable(model):
            raise TypeError(f"model: expected a callable model(x, t), got {type(model).__name__}")
        tuned_plan = ident = None
        if plan is not None:  # a tuned plan (fastddpm.tune) sets the method, its options and its timesteps
            from ..models.loading import model_identity, plan_file

            ident = model_identity(model)
            if isinstance(plan, (str, os.PathLike)) and not Path(plan).exists():  # a shipped model's plan, by name
                if ident is None or ident[1] != "shipped":
                    raise ValueError(f"plan: {plan} is not a file, and a plan is found by name only for a shipped model "
                                     f"loaded by fastddpm.pretrained.load_model (e.g. load_model('digits')); pass the plan's path")
                plan = plan_file(plan, ident[0])
            tuned_plan, sets = tuned.arguments(plan, method, steps=steps, spacing=spacing, order=order,
                                               solver_type=solver_type, corrector=corrector,
                                               lower_order_final=lower_order_final, timesteps=timesteps, scales=scales,
                                               guidance=guidance)
            method, timesteps, order, solver_type = sets["method"], sets["timesteps"], sets["order"], sets["solver_type"]
            corrector, lower_order_final, scales, guidance = (sets["corrector"], sets["lower_order_final"], sets["scales"],
                                                              sets["guidance"])
            disable_corrector = sets["disable_corrector"] or disable_corrector
        m, self.conventions = conventions.of(model).resolve(method, steps, spacing=spacing, eta=eta, variance=variance, clip=clip,
                                                            clipped_eps=clipped_eps, prediction=prediction, guidance=guidance,
                                                            guidance_interval=guidance_interval, order=order,
                                                            solver_type=solver_type, corrector=corrector,
                                                            disable_corrector=disable_corrector,
                                                            lower_order_final=lower_order_final, timesteps=timesteps,
                                                            scales=scales)
        self.plan = Plan.build(schedule, m)
        self.tuned = tuned_plan
        if tuned_plan is not None:
            tuned.check_for(tuned_plan, self.plan.schedule, self.plan.method.prediction,
                            model_hash=None if ident is None else ident[2])
        self.learned_sigma = conventions.of(model).learned_sigma  # its output: 2C channels, the prediction then v
        self.num_classes = num_classes(model)  # None: unconditional
        if guidance is not None and self.num_classes is None:
            raise ValueError("guidance: classifier-free guidance needs a class-conditional model (num_classes); this one "
                             "is unconditional")
        if guidance is not None and config_get(model, "null_label") is False:
            raise ValueError("guidance: classifier-free guidance needs the model's unconditional output (a null label), and "
                             "this class-conditional model was trained without one (OpenAI's ADM: guided by a classifier, "
                             "not by itself); sample it conditionally, guidance=None")
        self.kinds = self.plan.kinds  # "guided" (one 2B call), "null" (w = 0: B images, the null label) or "plain"
        self.schedule = self.plan.schedule
        self.shape = image_shape(model, shape)
        params = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        self.device = K.check_device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
        if params is not None and params.device != self.device:
            raise ValueError(f"device: the model's parameters are on {params.device}, not {self.device}")
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.dtype not in K.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32, bfloat16 or float16, got {self.dtype}")
        for name, v in (("channels_last", channels_last), ("cuda_graph", cuda_graph), ("progress", progress)):
            _flag(v, name)
        self.channels_last = channels_last
        self.compile = (self.device.type == "cuda") if compile is None else _flag(compile, "compile")
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.max_batch = _positive_int(max_batch, "max_batch")
        self.progress = progress
        self.model = self._prepare_model(model, params)
        self.table = self.plan.table(self.device)
        self.timesteps = self.plan.timesteps_on(self.device)
        self._buffers = {}  # micro-batch size -> _Buffers
        self.stats = {}  # timings of the last run, for the benchmark

    def _prepare_model(self, model, params):
        if params is None:
            return model
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        needs_copy = params.dtype != self.dtype or (
            self.channels_last and any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
        )
        if not needs_copy:
            return model
        model = copy.deepcopy(model)
        with warnings.catch_warnings():
            # diffusers' ModelMixin.to() warns about "modules that should be kept in float32: []"
            # for every dtype change, an empty list included: harmless here, so not shown.
            warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
            model = model.to(dtype=self.dtype, memory_format=fmt)
        return model.eval().requires_grad_(False)

    # ------------------------------------------------------------------ one step
    def _dense(self, eps: torch.Tensor) -> torch.Tensor:
        if not (eps.is_contiguous() or eps.is_contiguous(memory_format=torch.channels_last)):
            # a model may answer in any strides; the kernel reads dense NCHW or NHWC only, so the
            # Sampler (not the kernel, which never copies) makes the copy, decided at trace time
            eps = eps.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return eps

    def _step(self, b: _Buffers, kind: str = "plain") -> None:
        t = self.timesteps[b.k]
        eps_u = None
        m, C, H, W = b.x.shape
        out = (m, 2 * C, H, W) if self.learned_sigma else b.x.shape  # a learned-Σ model: ε̂ (or v, x_0), then its v
        if kind == "guided":  # one model call on 2B: (x, labels) and (x, null); the kernel combines the halves
            both = checked_output(self.model(torch.cat([b.x_in, b.x_in]), torch.cat([t, t]), b.both), (2 * m, *out[1:]))
            eps, eps_u = self._dense(both[:m]), self._dense(both[m:])
        elif kind == "null":  # w = 0: m(x, ∅) exactly (ε̂_u + 0·(ε̂_c − ε̂_u)), without the conditional half
            eps = self._dense(checked_output(self.model(b.x_in, t, b.null), out))
        elif self.num_classes is not None:
            eps = self._dense(checked_output(self.model(b.x_in, t, b.labels), out))
        else:
            eps = self._dense(checked_output(self.model(b.x_in, t), out))
        K.sampler_step(
            b.x, eps, b.k, self.table, self.timesteps, seeds=b.seeds if self.plan.stochastic else None, h=b.h,
            clip=self.plan.method.clip, eps_term=self.plan.eps_term, out=b.x, out_lowp=None if b.x_in is b.x else b.x_in,
            nonfinite=b.flags, eps_uncond=eps_u, basis=self.plan.basis,
            learned=(self.plan.method.variance == "learned") if self.learned_sigma else None,
        )
        b.k.add_(1)

    def _buffers_for(self, m: int) -> _Buffers:
        if m in self._buffers:
            return self._buffers[m]
        C, H, W = self.shape
        dev = self.device
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.empty((m, C, H, W), device=dev, dtype=torch.float32, memory_format=fmt)
        x_in = x if self.dtype == torch.float32 else torch.empty((m, C, H, W), device=dev, dtype=self.dtype, memory_format=fmt)
        both = None
        if self.num_classes is not None:
            both = torch.full((2 * m,), self.num_classes, device=dev, dtype=torch.int64)
            both[:m] = 0
        b = _Buffers(
            x=x, x_in=x_in, k=torch.zeros(m, device=dev, dtype=torch.int64), seeds=torch.arange(m, device=dev, dtype=torch.int64),
            flags=torch.full((m,), -1, device=dev, dtype=torch.int64),
            h=_ring(self.plan.history, x) if self.plan.multistep else None,
            both=both, labels=None if both is None else both[:m], null=None if both is None else both[m:],
            steps={}, graphs=[],
        )
        t0 = time.perf_counter()
        compiled = torch.compile(self._step, fullgraph=True, dynamic=False) if self.compile else self._step
        for kind in sorted(set(self.kinds)):  # the kinds of step this plan takes: one graph each
            step = (lambda g=kind: compiled(b, g))
            self._reset(b)
            with compile_errors_explained():
                if self.cuda_graph:
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(min(3, self.plan.K)):  # compile, autotune and allocate before capture
                            step()
                    torch.cuda.current_stream().wait_stream(side)
                    torch.cuda.synchronize()
                    self._reset(b)
                    t1 = time.perf_counter()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        step()
                    torch.cuda.synchronize()
                    self.stats["capture_s"] += time.perf_counter() - t1
                    b.graphs.append(graph)
                    b.steps[kind] = graph.replay
                else:
                    step()  # first step: compile (if asked) and allocate, reported apart from sampling
                    b.steps[kind] = step
        self.stats["warmup_s"] = time.perf_counter() - t0 - self.stats["capture_s"]
        self._buffers[m] = b
        return b

    def _reset(self, b: _Buffers) -> None:
        """Prior x_T ~ N(0, I) addressed by (seed, STREAM_PRIOR, 0); k = 0, flags -1, h = 0."""
        K.randn_(b.x, b.seeds, torch.zeros_like(b.k), K.STREAM_PRIOR)
        if b.x_in is not b.x:
            b.x_in.copy_(b.x)
        b.k.zero_()
        b.flags.fill_(-1)
        if b.h is not None:
            b.h.zero_()

    # ------------------------------------------------------------------ the run
    @torch.inference_mode()
    def run(self, batch: Optional[int] = None, seed: int = 0, *, seeds=None, labels=None, max_batch: Optional[int] = None,
            stop_after: Optional[int] = None, progress: Optional[bool] = None, record=None) -> torch.Tensor:
        """Draw images: (B, C, H, W) float32 on the sampler's device, in the model's range.

        batch/seed: images seed, seed+1, ..., seed+batch-1 (default batch 1024); or
        seeds:      explicit per-image seeds, an int64 tensor or a sequence of ints.
        labels:     a class-conditional model's classes in [0, num_classes): one int for every
                    image, a sequence or a tensor (one per image); part of an image's address,
                    so image k depends only on the model, the method, seed k and label k.
        stop_after: run only the first n steps (for tests and benchmarks): the result
                    is then the state after those steps, not an image.
        record:     step indices k: the state entering step k of every image is kept in
                    `self.recorded[k]` (B, C, H, W) float32 (fastddpm.tune's teacher trajectories).
        """
        seeds = self._seeds(batch, seed, seeds)
        B, KS = seeds.numel(), self.plan.K
        labels = self._labels(labels, B)
        steps = KS if stop_after is None else stop_after
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= KS:
            raise ValueError(f"stop_after: expected an int in [1, {KS}] (the plan's steps), got {stop_after!r}")
        record = sorted(set(record)) if record is not None else []
        if any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < steps for k in record):
            raise ValueError(f"record: expected step indices in [0, {steps}), got {record!r}")
        mb = _positive_int(max_batch if max_batch is not None else self.max_batch, "max_batch")
        self.stats = {"warmup_s": 0.0, "capture_s": 0.0}
        chunks = math.ceil(B / mb)
        m = math.ceil(B / chunks)  # balanced micro-batches: at most chunks-1 padded slots
        was_training = getattr(self.model, "training", False)
        if was_training:
            self.model.eval()
        try:
            with K.value_checks(False):  # k stays in range by construction: no wait for the GPU
                b = self._buffers_for(m)
                out = torch.empty((B, *self.shape), device=self.device, dtype=torch.float32)
                self.recorded = {k: torch.empty_like(out) for k in record}
                flags = torch.empty(B, device=self.device, dtype=torch.int64)
                bar = _Progress(steps, chunks, m, self.device, _flag(progress, "progress") if progress is not None else self.progress)
                t0 = time.perf_counter()
                for c in range(chunks):
                    lo, n = c * m, min(m, B - c * m)
                    chunk = seeds[lo : lo + n]
                    b.seeds[:n].copy_(chunk)
                    if n < m:  # padding slots: seeds past the chunk's last, results discarded
                        b.seeds[n:].copy_(chunk[-1] + 1 + torch.arange(m - n, device=self.device))
                    if labels is not None:
                        b.labels[:n].copy_(labels[lo : lo + n])
                        b.labels[n:].fill_(0)  # padding slots: any valid class
                    self._reset(b)
                    for i in range(steps):
                        if i in self.recorded:
                            self.recorded[i][lo : lo + n].copy_(b.x[:n])
                        b.steps[self.kinds[i]]()  # the step's kind is known on the host: no sync
                        bar.update(c * steps + i + 1)
                    out[lo : lo + n].copy_(b.x[:n])
                    flags[lo : lo + n].copy_(b.flags[:n])  # the padding slots' flags are never read
                first_bad = flags.cpu()  # the one wait for the GPU in a run
                self.stats.update(sample_s=time.perf_counter() - t0, steps=steps * chunks, micro_batch=m, chunks=chunks)
                self.stats["ms_per_step"] = 1e3 * self.stats["sample_s"] / (steps * chunks)
                bar.close()
        finally:
            if was_training:
                self.model.train()
        if bool((first_bad >= 0).any()):
            i = int(torch.nonzero(first_bad >= 0)[0])
            t_bad = int(first_bad.max())
            err = FloatingPointError(
                f"model: non-finite values first appeared at timestep t={t_bad} "
                f"(step {self.plan.timesteps.index(t_bad) + 1} of {KS}) in {int((first_bad >= 0).sum())} of {B} "
                f"images, the first of them seed {int(seeds[i])}"
            )
            err.images = out  # the finished run, not lost
            err.bad = first_bad >= 0
            raise err
        return out

    def _labels(self, labels, B: int):
        """(B,) int64 labels on the device for a class-conditional model; None for another."""
        n = self.num_classes
        if n is None:
            if labels is not None:
                raise ValueError("labels: this model is unconditional (it has no num_classes); pass no labels")
            return None
        if labels is None:
            if set(self.kinds) == {"null"}:  # guidance=0 everywhere: the null label alone, no class asked for
                return None
            raise ValueError(f"labels: this model is class-conditional (num_classes={n}): pass labels= (one int for all, "
                             f"or one a image), or guidance=0 to sample unconditionally")
        return label_tensor(labels, B, n).to(self.device)

    def _seeds(self, batch, seed, seeds) -> torch.Tensor:
        if seeds is not None:
            seeds = seed_tensor(seeds)
            if batch is not None and batch != seeds.numel():
                raise ValueError(f"batch: {batch} disagrees with len(seeds) = {seeds.numel()}")
            return seeds.to(self.device)
        batch = _positive_int(1024 if batch is None else batch, "batch")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if not -(2**63) <= seed <= 2**63 - batch:
            raise ValueError(f"seed: seeds {seed} .. {seed} + {batch - 1} must fit int64 ([-2**63, 2**63))")
        return torch.arange(batch, device=self.device, dtype=torch.int64) + seed


def _ring(slots: int, x: torch.Tensor) -> torch.Tensor:
    """A zeroed history ring (slots, *x.shape), each slot laid out as x (channels-last or not)."""
    if x.is_contiguous():
        return torch.zeros((slots, *x.shape), device=x.device, dtype=torch.float32)
    B, C, H, W = x.shape
    return torch.zeros((slots, B, H, W, C), device=x.device, dtype=torch.float32).permute(0, 1, 4, 2, 3)


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def _flag(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected True or False, got {v!r}")
    return v


class compile_errors_explained:
    """Turn Inductor's failure to load a half-written cache entry (a compile killed by a
    timeout or SIGKILL leaves a zero-byte .so behind) into an error that says what to do."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is not None and compile_cache_damaged(err):
            raise RuntimeError(
                "torch.compile could not load a file from its cache, most likely left half-written by an "
                "interrupted compile: delete the cache (rm -rf \"$(python -c 'import torch._inductor.config as c; "
                "print(c.cache_dir())' 2>/dev/null || echo /tmp/torchinductor_$USER)\") or set "
                "TORCHINDUCTOR_CACHE_DIR to a fresh folder, then run again; compile=False avoids compiling. "
                f"({type(err).__name__}: {err})"
            ) from err
        return False


def compile_cache_damaged(err: BaseException) -> bool:
    """True for the errors a truncated Inductor cache entry gives when it is loaded."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        if isinstance(err, (ImportError, OSError)) and ("file too short" in text or "invalid ELF header" in text):
            return True
        if "file too short" in text and ".so" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


class _Progress:
    """Steps done and the image rate on stderr, at most twice a second. On CUDA it reads
    CUDA events (query, never synchronize), so it reports finished steps, not queued ones."""

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
        sys.stderr.write(f"\rsampling: step {self.done}/{self.total}  {self.done / dt:.3g} steps/s  {rate(images, dt)}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            self.done = self.total
            self._print(time.perf_counter())
            sys.stderr.write("\n")


def rate(items: float, seconds: float, unit: str = "image") -> str:
    """'12.3 images/s', or '4.56 s/image' when slower than one a second: never '0.0 images/s'."""
    if items <= 0:
        return f"- {unit}s/s"
    per_s = items / max(seconds, 1e-9)
    return f"{per_s:.3g} {unit}s/s" if per_s >= 1 else f"{1 / per_s:.3g} s/{unit}"
