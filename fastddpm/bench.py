"""python -m fastddpm.bench: the numbers that prove the engine, side by side.

    python -m fastddpm.bench                      # full suite for the device found
    python -m fastddpm.bench --quick --json out.json
    python -m fastddpm.bench --only kernels,sampler --batch 1,64,1024 --steps 100

Kernels: fused vs the eager reference vs the reference under torch.compile, as median
time, effective GB/s (bytes each operation must move) and the fraction of the copy
bandwidth measured in the same run. Sampler: ms per step and images/s of a full
1000-step run for the reference sampler, fastddpm's Sampler and diffusers' DDPMPipeline
(same weights), the graphed U-Net alone as the floor, MFU against a bf16 matmul rate
measured in the same run. Training step: images/s and peak memory, fused vs reference.
"""

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import kernels as K
from . import reference as R
from .benchlib import NVML, copy_bandwidth, kernel_bytes, matmul_rate, peak_memory, sync, time_fn, time_kernel, unet_flops
from .sampler import Sampler
from .schedule import Schedule
from .unet import UNet, UNetConfig

SCHEMA = "fastddpm.bench/1"
SECTIONS = ("kernels", "sampler", "train")
TINY_UNET = UNetConfig(sample_size=16, base_channels=32, channel_mult=(1, 2), layers_per_block=1, attn_resolutions=(8,))


def plan(device: torch.device, quick: bool) -> dict:
    """Sizes per device: the product's target on a GPU, a small smoke run on a CPU."""
    if device.type == "cuda":
        return dict(
            kernel_shapes=[(1024, 3, 32, 32), (128, 3, 256, 256)] if not quick else [(1024, 3, 32, 32)],
            unet=UNetConfig.cifar10(), batches=[1, 1024], steps=100 if not quick else 30, ref_steps=10 if not quick else 3,
            train_batch=128, train_reps=20 if not quick else 5, energy_s=10.5 if not quick else 0.0,
        )
    return dict(
        kernel_shapes=[(64, 3, 32, 32), (2, 3, 256, 256)] if not quick else [(8, 3, 32, 32)],
        unet=TINY_UNET, batches=[1, 8] if not quick else [2], steps=10 if not quick else 2, ref_steps=3 if not quick else 1,
        train_batch=8 if not quick else 2, train_reps=5 if not quick else 2, energy_s=0.0,
    )


def environment() -> dict:
    import triton

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "commit": commit.stdout.strip() or None, "platform": platform.platform(),
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    return env


# ------------------------------------------------------------------ kernels


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
        return R.q_sample(x0, t, sched, torch.randn_like(x0))

    def step_ref():
        x = R.reverse_step(state, eps.float(), t, sched, torch.randn_like(state))
        return x, (x.to(dtype) if lowp is not None else x)

    def loss_ref():
        return torch.autograd.grad(F.mse_loss(eps_req.float(), noise), eps_req)

    return [
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
                        r = time_kernel(fn, device)
                    gbs = nbytes / (r["median_ms"] * 1e-3) / 1e9
                    rows.append(dict(op=op, impl=impl, shape=list(shape), dtype=str(dtype).replace("torch.", ""),
                                     bytes=nbytes, gbs=gbs, frac_copy_bw=gbs / rates["copy_gbs"] if rates.get("copy_gbs") else None, **r))
    return rows


# ------------------------------------------------------------------ sampler


def graphed_unet(net, x, t):
    """The U-Net alone, compiled and (on CUDA) captured: the sampler's floor. -> (fn, setup s)"""
    t0 = time.perf_counter()
    fwd = torch.compile(net, fullgraph=True, dynamic=False)
    if x.device.type != "cuda":
        fwd(x, t)
        return (lambda: fwd(x, t)), time.perf_counter() - t0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fwd(x, t)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fwd(x, t)
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
            row["unet_ms"] = time_fn(floor, device, reps=max(p["steps"], 5))["median_ms"]
        fast.run(batch=B, steps=2)  # compile and capture
        row["sampler_compile_s"], row["sampler_capture_s"] = fast.stats["warmup_s"], fast.stats["capture_s"]
        fast.run(batch=B, steps=p["steps"])
        row["sampler_ms"] = fast.stats["ms_per_step"]
        if p["energy_s"]:  # NVML's energy counter over at least energy_s seconds of sampling
            n = min(sched.T, math.ceil(1e3 * p["energy_s"] / row["sampler_ms"]))
            done, t0 = 0, time.perf_counter()
            with nvml.energy(row):
                while done == 0 or time.perf_counter() - t0 < p["energy_s"]:
                    fast.run(batch=B, steps=n)
                    done += n
            if "energy_j" in row:
                row["joules_per_image"] = row["energy_j"] / (B * done / sched.T)  # per full T-step image
        seeds = torch.arange(B, device=device)
        row["reference_ms"] = _per_step(lambda: R.sample(net, sched, seeds, shape, steps=p["ref_steps"]), device, p["ref_steps"])
        if pipe is not None:
            gen = torch.Generator(device=device).manual_seed(0)
            run = lambda: pipe(batch_size=B, generator=gen, num_inference_steps=p["ref_steps"], output_type="np")  # noqa: E731
            row["diffusers_ms"] = _per_step(run, device, p["ref_steps"])
        for k in ("unet", "sampler", "reference", "diffusers"):
            if f"{k}_ms" in row:
                row[f"{k}_images_per_s"] = B / (row[f"{k}_ms"] * 1e-3 * sched.T)  # a full T-step run
        row["sampler_over_unet"] = row["sampler_ms"] / row["unet_ms"]
        if "diffusers_ms" in row:
            row["speedup_vs_diffusers"] = row["diffusers_ms"] / row["sampler_ms"]
        if rates.get("matmul_tflops"):
            row["mfu"] = flops * B / (row["sampler_ms"] * 1e-3) / (rates["matmul_tflops"] * 1e12)
        rows.append(row)
    return rows


def _per_step(fn, device, steps) -> float:
    with K.value_checks(False):  # the reference materialises its noise through K.randn
        return time_fn(fn, device, warmup=1, reps=3)["median_ms"] / steps


# ------------------------------------------------------------------ training step


def bench_train(p, device, sched) -> list:
    torch.manual_seed(0)
    net = UNet(p["unet"]).to(device)
    cuda = device.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda)
    B, c = p["train_batch"], net.config
    x0 = torch.rand(B, c.in_channels, c.sample_size, c.sample_size, device=device).mul_(2).sub_(1)
    if cuda:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    table = sched.table(device=device)
    counter = [0]

    def step(fused: bool):
        counter[0] += 1
        t = torch.randint(0, sched.T, (B,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            if fused:
                seeds = counter[0] * B + torch.arange(B, device=device)
                x_t = K.q_sample(x0, t, table, seeds=seeds)
                loss = K.eps_mse_loss(net(x_t, t), t, seeds=seeds)
            else:
                noise = torch.randn_like(x0)
                loss = F.mse_loss(net(R.q_sample(x0, t, sched, noise), t).float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []
    for fused in (True, False):
        with K.value_checks(False):
            r = time_fn(lambda: step(fused), device, warmup=2, reps=p["train_reps"])
            peak = peak_memory(lambda: step(fused), device)
        rows.append(dict(impl="fused" if fused else "reference", batch=B, images_per_s=B / (r["median_ms"] * 1e-3),
                         peak_bytes=peak, **r))
    return rows


# ------------------------------------------------------------------ report


def print_report(rep: dict) -> None:
    out = sys.stdout
    out.write(f"fastddpm.bench on {rep['device']['name']}  (torch {rep['env']['torch']}, triton {rep['env']['triton']})\n")
    for note in rep["notes"]:
        out.write(f"note: {note}\n")
    d = rep["device"]
    if d.get("copy_gbs"):
        out.write(f"copy bandwidth {d['copy_gbs']:.0f} GB/s measured"
                  + (f", {d['theoretical_bandwidth_gbs']:.0f} GB/s theoretical" if d.get("theoretical_bandwidth_gbs") else "")
                  + (f"; bf16 matmul {d['matmul_tflops']:.0f} TFLOP/s measured" if d.get("matmul_tflops") else "") + "\n")
    if rep["kernels"]:
        out.write("\nkernels                                    median ms    GB/s  of copy\n")
        for r in rep["kernels"]:
            frac = f"{100 * r['frac_copy_bw']:6.1f}%" if r["frac_copy_bw"] else "      -"
            name = f"{r['op']:<12} {r['impl']:<8} {r['dtype']:<8} {'x'.join(map(str, r['shape'])):<14}"
            out.write(f"{name} {r['median_ms']:9.4f} {r['gbs']:8.1f} {frac}\n")
    if rep["sampler"]:
        out.write("\nsampler (ms/step; images/s of a full run)   U-Net alone   fastddpm   reference   diffusers   MFU\n")
        for r in rep["sampler"]:
            dif = f"{r['diffusers_ms']:9.2f}" if "diffusers_ms" in r else "        -"
            mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "    -"
            out.write(f"batch {r['batch']:<5} ms/step                {r['unet_ms']:11.3f} {r['sampler_ms']:10.3f} "
                      f"{r['reference_ms']:11.2f} {dif}  {mfu}\n")
            out.write(f"{'':11} images/s               {r['unet_images_per_s']:11.2f} {r['sampler_images_per_s']:10.2f} "
                      f"{r['reference_images_per_s']:11.3f}" + (f" {r['diffusers_images_per_s']:11.3f}" if "diffusers_ms" in r else "") + "\n")
            out.write(f"{'':11} compile {r['sampler_compile_s']:.1f} s, capture {r['sampler_capture_s']:.2f} s\n")
    for r in rep["train"]:
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] is not None else "-"
        out.write(f"\ntrain step {r['impl']:<9} batch {r['batch']}: {r['images_per_s']:.1f} images/s, peak {mem}")
    out.write("\n")


def plot(rows: list, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"
    fig, ax = plt.subplots(figsize=(6, 4))
    batches = [r["batch"] for r in rows]
    for key, label in (("sampler", "fastddpm Sampler"), ("unet", "U-Net alone (floor)"), ("reference", "reference"), ("diffusers", "diffusers")):
        ys = [r.get(f"{key}_images_per_s") for r in rows]
        if all(y is not None for y in ys):
            ax.plot(batches, ys, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="images/s (1000-step run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return str(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--batch", default=None, help="sampler batch sizes, comma list (default 1,1024 on GPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed sampler steps per measurement")
    ap.add_argument("--json", default=None, help="write every figure and the environment here")
    ap.add_argument("--plot", default=None, help="PNG of throughput against batch (default: beside --json)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if any(s not in SECTIONS for s in only):
        ap.error(f"--only: expected a comma list of {SECTIONS}, got {args.only!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    p = plan(device, args.quick)
    if args.batch:
        p["batches"] = [int(b) for b in args.batch.split(",")]
    if args.steps:
        p["steps"] = args.steps
    sched = Schedule.linear()
    nvml = NVML(device)
    rep = {"schema": SCHEMA, "env": environment(), "device": {}, "kernels": [], "sampler": [], "train": [], "notes": [], "plot": None}
    rep["device"] = {"name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu", **nvml.facts()}
    if device.type == "cpu":
        rep["notes"].append("CPU run: a smoke test of the benchmark, not the product's target (fastddpm is measured on GPUs)")
    rates = {}
    if device.type == "cuda":
        rates = {"copy_gbs": copy_bandwidth(device, 2**30), "matmul_tflops": matmul_rate(device, 8192, torch.bfloat16)}
    rep["device"].update(rates)
    if "kernels" in only:
        rep["kernels"] = bench_kernels(p, device, sched, rates)
    if "sampler" in only:
        rep["sampler"] = bench_sampler(p, device, sched, rates, nvml)
    if "train" in only:
        rep["train"] = bench_train(p, device, sched)
    sync(device)
    plot_path = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot_path and rep["sampler"]:
        rep["plot"] = plot(rep["sampler"], Path(plot_path))
    print_report(rep)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1, default=str))
    return rep


if __name__ == "__main__":
    main()
