"""The timed suites of `python -m fastddpm.bench`: kernels, the sampler (and each fewer-step
method), the training step; each returns rows for the report (fastddpm.bench.report)."""

import dataclasses
import math
import statistics
import time

import torch

from .. import kernels as K
from ..core import reference as R
from ..core.schedule import Schedule
from ..models.unet import UNet, UNetConfig
from ..sampling.sampler import Sampler
from ..training.trainer import TrainConfig, Trainer
from .timing import kernel_bytes, peak_memory, summarize, time_fn, time_kernel, unet_flops

TINY_UNET = UNetConfig(sample_size=16, base_channels=32, channel_mult=(1, 2), layers_per_block=1, attn_resolutions=(8,))


def kernel_cases(shape, dtype, device, sched: Schedule):
    """(op, {impl: fn}) for the three operations; every fn does the whole operation."""
    B = shape[0]
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(shape, device=device, generator=g).mul_(2).sub_(1).to(dtype)  # never zeros
    t = torch.randint(0, sched.T, (B,), device=device, generator=g)
    seeds = torch.arange(B, device=device)
    table = sched.table("large", device)
    state = torch.randn(shape, device=device, generator=g)  # fp32 sampler state
    eps = torch.randn(shape, device=device, generator=g).to(dtype)
    lowp = None if dtype == torch.float32 else torch.empty(shape, device=device, dtype=dtype)
    noise = torch.randn(shape, device=device, generator=g)  # the stored ε of a reference trainer
    eps_req = eps.clone().requires_grad_()

    def q_ref():
        return R.q_sample(x0, t, sched, noise=torch.randn_like(x0))

    def step_ref():
        x = R.reverse_step(state, eps.float(), t, sched, noise=torch.randn_like(state))
        return x, (x.to(dtype) if lowp is not None else x)

    def loss_ref():
        return torch.autograd.grad(R.eps_mse_loss(eps_req, t, noise=noise), eps_req)

    out = torch.empty(shape, device=device, dtype=dtype)
    return [
        # the draw alone: the addressed normals (what the fused ops draw inside) against torch.randn
        ("randn", {"fused": lambda: K.randn_(out, seeds, t, K.STREAM_NOISING), "eager": lambda: torch.randn(shape, out=out)}),
        ("q_sample", {"fused": lambda: K.q_sample(x0, t, table, seeds=seeds), "eager": q_ref, "compiled": torch.compile(q_ref)}),
        ("reverse_step", {
            "fused": lambda: K.reverse_step(state, eps, t, table, seeds=seeds, out=state, out_lowp=lowp),
            "eager": step_ref, "compiled": torch.compile(step_ref),
        }),
        ("loss", {
            "fused": lambda: torch.autograd.grad(K.eps_mse_loss(eps_req, t, seeds=seeds), eps_req),
            "eager": loss_ref, "compiled": torch.compile(loss_ref),
        }),
    ]


def bench_kernels(p, device, sched, rates) -> list:
    rows = []
    for shape in p["kernel_shapes"]:
        for dtype in (torch.float32, torch.bfloat16):
            for op, impls in kernel_cases(shape, dtype, device, sched):
                nbytes = kernel_bytes(op, shape, dtype)
                for impl, fn in impls.items():
                    with K.value_checks(False):  # the eager t-range check would wait for the GPU each call
                        r = time_kernel(fn, device, p["kernel_min_s"])
                    gbs = nbytes / (r["median_ms"] * 1e-3) / 1e9
                    rows.append(dict(op=op, impl=impl, shape=list(shape), dtype=str(dtype).replace("torch.", ""),
                                     bytes=nbytes, gbs=gbs, frac_copy_bw=gbs / rates["copy_gbs"] if rates.get("copy_gbs") else None, **r))
    return rows


# ------------------------------------------------------------------ sampler


def graphed_unet(net, x, t, labels=None, compiled_on_cpu: bool = False):
    """The U-Net alone, run the way the Sampler runs it: the sampler's floor. -> (fn, setup s).
    On CUDA compiled and captured in a CUDA graph; on a CPU eager, as the Sampler is there by
    default, or compiled (compiled_on_cpu, the floor of Sampler(compile=True)).
    labels: a class-conditional U-Net's (B,) labels."""
    t0 = time.perf_counter()
    args = (x, t) if labels is None else (x, t, labels)
    fwd = torch.compile(net, fullgraph=True, dynamic=False) if x.device.type == "cuda" or compiled_on_cpu else net
    if x.device.type != "cuda":
        fwd(*args)
        return (lambda: fwd(*args)), time.perf_counter() - t0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fwd(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fwd(*args)
    torch.cuda.synchronize()
    return graph.replay, time.perf_counter() - t0


def diffusers_pipeline(net: UNet, sched: Schedule):
    """diffusers' DDPMPipeline on the same weights (fp32, eager), or None without diffusers."""
    try:
        import diffusers
    except ImportError:
        return None
    c = net.config
    kinds = ["Attn" if c.attention_at(i) else "" for i in range(len(c.channel_mult))]
    unet = diffusers.UNet2DModel(
        sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
        layers_per_block=c.layers_per_block, block_out_channels=c.block_out_channels,
        down_block_types=tuple(k + "DownBlock2D" for k in kinds), up_block_types=tuple(k + "UpBlock2D" for k in reversed(kinds)),
        attention_head_dim=c.attention_head_dim, downsample_padding=c.downsample_padding, flip_sin_to_cos=c.flip_sin_to_cos,
        freq_shift=c.freq_shift, norm_eps=c.norm_eps, norm_num_groups=c.norm_groups,
    )
    unet.load_state_dict({**unet.state_dict(), **net.state_dict()})  # our keys are theirs
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=sched.T, trained_betas=sched.betas.numpy())
    pipe = diffusers.DDPMPipeline(unet=unet.to(next(net.parameters()).device).float().eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_sampler(p, device, sched, rates, nvml) -> list:
    torch.manual_seed(0)
    net = UNet(p["unet"]).to(device).eval()
    shape = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
    flops = unet_flops(net, shape, device)
    pipe = diffusers_pipeline(net, sched)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    fast = Sampler(net, sched, progress=False)
    rows = []
    for B in p["batches"]:
        row = dict(batch=B, flops_per_image=flops, model_dtype=str(dtype).replace("torch.", ""))
        x = torch.randn(B, *shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        t = torch.full((B,), 500, device=device)
        with torch.inference_mode():
            floor, row["unet_setup_s"] = graphed_unet(fast.model, x, t)
        fast.run(batch=B, stop_after=2)  # compile and capture
        row["sampler_compile_s"], row["sampler_capture_s"] = fast.stats["warmup_s"], fast.stats["capture_s"]
        row["unet_ms"], row["sampler_ms"] = floor_and_sampler(floor, fast, B, p, device)
        if p["energy_s"]:  # NVML's energy counter over at least energy_s seconds of sampling
            n = min(sched.T, math.ceil(1e3 * p["energy_s"] / row["sampler_ms"]))
            done, t0 = 0, time.perf_counter()
            with nvml.energy(row):
                while done == 0 or time.perf_counter() - t0 < p["energy_s"]:
                    fast.run(batch=B, stop_after=n)
                    done += n
            if "energy_j" in row:
                row["joules_per_image"] = row["energy_j"] / (B * done / sched.T)  # per full T-step image
        seeds = torch.arange(B, device=device)
        row["reference_ms"] = _per_step(lambda: R.sample(net, sched, seeds, shape, stop_after=p["ref_steps"]), device, p["ref_steps"])
        if pipe is not None:
            gen = torch.Generator(device=device).manual_seed(0)
            run = lambda: pipe(batch_size=B, generator=gen, num_inference_steps=p["ref_steps"], output_type="np")  # noqa: E731
            row["diffusers_ms"] = _per_step(run, device, p["ref_steps"])
        for k in ("unet", "sampler", "reference", "diffusers"):
            if f"{k}_ms" in row:
                row[f"{k}_images_per_s"] = B / (row[f"{k}_ms"] * 1e-3 * sched.T)  # a full T-step run
        row["sampler_over_unet"] = row["sampler_ms"] / row["unet_ms"]
        if device.type == "cpu" and p["cpu_compiled"]:
            row.update(bench_cpu_compiled(net, sched, B, p, device))
        row.update(bench_guided(net, sched, B, p, device))
        row["methods"] = bench_methods(net, sched, B, p, row["unet_ms"], device) if B == max(p["batches"]) else []
        if "diffusers_ms" in row:
            row["speedup_vs_diffusers"] = row["diffusers_ms"] / row["sampler_ms"]
        if rates.get("matmul_tflops"):
            row["mfu"] = flops * B / (row["sampler_ms"] * 1e-3) / (rates["matmul_tflops"] * 1e12)
        rows.append(row)
    return rows


def floor_and_sampler(floor, sampler: Sampler, B: int, p: dict, device, labels=None) -> tuple:
    """(U-Net alone, ms a call; the sampler, ms a step of a run of p["steps"] steps): medians of
    p["rounds"] measurements taken in turn. A CPU's speed drifts by several per cent over
    seconds, so the two are measured alternately, never one after the other, and both as
    the mean of a run of p["steps"] calls (a median of single calls would drop the slow ones
    that the sampler's run counts). On CUDA: the median call, from CUDA events."""
    floors, steps = [], []
    n = max(p["steps"], 5)
    for _ in range(p["rounds"]):
        with torch.inference_mode():
            if device.type == "cuda":
                floors.append(time_fn(floor, device, reps=n)["median_ms"])
            else:
                floor()
                t0 = time.perf_counter()
                for _ in range(n):
                    floor()
                floors.append(1e3 * (time.perf_counter() - t0) / n)
        sampler.run(batch=B, labels=labels, stop_after=p["steps"])
        steps.append(sampler.stats["ms_per_step"])
    return statistics.median(floors), statistics.median(steps)


def bench_cpu_compiled(net, sched, B: int, p: dict, device) -> dict:
    """On a CPU: the Sampler with compile=True, whose step traces the update's torch twin (the
    draw included) into the model's graph, where Inductor fuses it, against the U-Net compiled
    alone the same way: the like-for-like floor, as the graphed U-Net is on CUDA. The compile
    times are reported apart from the timings."""
    s = Sampler(net, sched, compile=True, progress=False)
    shape = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
    x = torch.randn(B, *shape, device=device, dtype=s.dtype).contiguous(memory_format=torch.channels_last)
    t = torch.full((B,), 500, device=device)
    with torch.inference_mode():
        floor, setup = graphed_unet(s.model, x, t, compiled_on_cpu=True)
    s.run(batch=B, stop_after=2)  # compile
    compile_s = s.stats["warmup_s"]
    unet_ms, ms = floor_and_sampler(floor, s, B, p, device)
    return dict(unet_compiled_ms=unet_ms, unet_compiled_setup_s=setup, sampler_compiled_ms=ms,
                sampler_compiled_compile_s=compile_s, sampler_compiled_over_unet=ms / unet_ms)


GUIDED_CLASSES = 10


def bench_guided(net, sched, B: int, p: dict, device) -> dict:
    """A classifier-free-guided step (w = 3) of the same U-Net made class-conditional, against
    that model alone on the 2B batch it is called with: the guided step's overhead, to compare
    with the unguided step's over the U-Net on B (the kernel reads one more input, no more)."""
    torch.manual_seed(0)
    cond = UNet(dataclasses.replace(net.config, num_classes=GUIDED_CLASSES)).to(device).eval()
    cond.load_state_dict(net.state_dict(), strict=False)  # the same weights, plus a class embedding
    s = Sampler(cond, sched, guidance=3.0, progress=False)
    shape = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
    x = torch.randn(2 * B, *shape, device=device, dtype=s.dtype).contiguous(memory_format=torch.channels_last)
    t = torch.full((2 * B,), 500, device=device)
    labels = torch.arange(2 * B, device=device) % (GUIDED_CLASSES + 1)
    with torch.inference_mode():
        floor, _ = graphed_unet(s.model, x, t, labels)
    labels = torch.arange(B, device=device) % GUIDED_CLASSES
    s.run(batch=B, labels=labels, stop_after=2)  # compile and capture
    unet_2b, ms = floor_and_sampler(floor, s, B, p, device, labels)
    return dict(guided_unet_2b_ms=unet_2b, guided_ms=ms, guided_overhead_ms=ms - unet_2b)


METHOD_STEPS = (("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpm++2m", 20), ("dpm++2m", 10),
                ("sde-dpm++2m", 20), ("dpm++3m", 10), ("sde-dpm++3m", 20), ("unipc", 10, dict(order=3)), ("unipc", 5, dict(order=3)),
                ("ipndm", 10), ("ipndm", 5))  # (method, steps[, options]): the multistep ones read 1-3 history slots a step


def bench_methods(net, sched, B: int, p: dict, unet_ms: float, device) -> list:
    """images/s of each method at its typical step counts: the measured ms/step of its own
    compiled (and on CUDA graphed) step, times its steps; and its per-step overhead over the
    model alone."""
    rows = []
    for method, steps, *options in METHOD_STEPS:
        options = options[0] if options else {}
        steps = min(steps, sched.T)
        if (method, steps, options) in [(r["method"], r["steps"], r.get("options", {})) for r in rows]:
            continue
        s = Sampler(net, sched, method=method, steps=steps, progress=False, **options)
        s.run(batch=B, stop_after=min(2, steps))  # compile and capture
        s.run(batch=B, stop_after=min(steps, p["steps"]))
        ms = s.stats["ms_per_step"]
        rows.append(dict(method=method, steps=steps, ms_per_step=ms, overhead_ms=ms - unet_ms,
                         images_per_s=B / (ms * 1e-3 * steps), batch=B, label=s.plan.method.label(),
                         **({"options": options} if options else {})))
    return rows


def _per_step(fn, device, steps) -> float:
    with K.value_checks(False):  # the reference materialises its noise through K.randn
        return time_fn(fn, device, warmup=1, reps=3)["median_ms"] / steps


# ------------------------------------------------------------------ training step


def bench_train(p, device, sched) -> list:
    """The Trainer's own step (fused kernels or the reference path): gradient clipping, warm-up,
    AdamW, EMA and the addressed data/timestep/noise draw included."""
    c = p["unet"]
    g = torch.Generator().manual_seed(0)
    data = torch.rand(max(4 * p["train_batch"], 64), c.in_channels, c.sample_size, c.sample_size, generator=g).mul_(2).sub_(1)
    trainers = {}
    for fused in (True, False):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=10**9, batch_size=p["train_batch"], fused=fused, schedule="linear", T=sched.T)
        trainers[fused] = Trainer(UNet(c), data, cfg, device=device, progress=False)
    times = {fused: [] for fused in trainers}
    with K.value_checks(False):
        for _ in range(p["rounds"]):  # in turn, as the sampler's (a CPU's speed drifts over seconds)
            for fused, trainer in trainers.items():
                time_fn(trainer.train_step, device, warmup=2, reps=p["train_reps"], samples=times[fused])
    rows = []
    for fused, trainer in trainers.items():
        r = summarize(times[fused])
        with K.value_checks(False):
            peak = peak_memory(trainer.train_step, device)
        rows.append(dict(impl="fused" if fused else "reference", batch=trainer.cfg.batch_size,
                         images_per_s=trainer.cfg.batch_size / (r["median_ms"] * 1e-3), peak_bytes=peak, **r))
    return rows


# ------------------------------------------------------------------ report


# ------------------------------------------------------------------ data loading


def bench_loader(p, device, train_rows=None) -> list:
    """Images/s of the streamed folder loader (fastddpm.io.sources, training/loader.py) alone:
    CIFAR-like 32x32 RGB PNG files decoded and fitted to the benchmark U-Net's size, batches of
    the train step's size pulled through the StepLoader with 0 (in the training process) and all
    CPUs' worker processes, beside the train step's own images/s (the train section's, when run)."""
    import os
    import tempfile

    import numpy as np

    from ..io.sources import FolderSource, _pil
    from ..training.loader import StepLoader

    Image = _pil()
    c, B = p["unet"], p["train_batch"]
    n = max(16 * B, 512)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f"{tmp}/{i:06d}.png")
        src = FolderSource(tmp, image_size=c.sample_size, channels=c.in_channels, memory_limit=0)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))

        def indices(step):
            return perm[(step * B + torch.arange(B)) % n]

        steps = n // B
        for workers in sorted({0, os.cpu_count() or 1}):
            loader = StepLoader(src, indices, workers=workers, pin=device.type == "cuda")
            loader.get(0, indices(0))  # workers started, the first batch read
            t0 = time.perf_counter()
            for s in range(1, steps):
                loader.get(s, indices(s))
            dt = time.perf_counter() - t0
            loader.close()
            rows.append(dict(source=f"folder of {n} PNG 32x32 RGB, fitted to {c.sample_size}", workers=workers, batch=B,
                             images_per_s=(steps - 1) * B / dt))
    step = next((r["images_per_s"] for r in (train_rows or []) if r["impl"] == "fused"), None)
    for r in rows:
        r["train_step_images_per_s"] = step
        r["bound"] = None if step is None else ("loader" if r["images_per_s"] < step else "train step")
    return rows
