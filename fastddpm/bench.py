"""python -m fastddpm.bench: the numbers that prove the engine, side by side.

    python -m fastddpm.bench                      # full suite for the device found
    python -m fastddpm.bench --quick --json out.json
    python -m fastddpm.bench --only kernels,sampler --batch 1,64,1024 --steps 100
    python -m fastddpm.bench --static             # the kernels' machine code: a cost report, no GPU needed

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

from . import kernels as K
from . import reference as R
from .benchlib import NVML, copy_bandwidth, host_load, kernel_bytes, matmul_rate, peak_memory, sync, time_fn, time_kernel, unet_flops
from .sampler import Sampler
from .schedule import Schedule
from .trainer import TrainConfig, Trainer
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
        return R.q_sample(x0, t, sched, noise=torch.randn_like(x0))

    def step_ref():
        x = R.reverse_step(state, eps.float(), t, sched, noise=torch.randn_like(state))
        return x, (x.to(dtype) if lowp is not None else x)

    def loss_ref():
        return torch.autograd.grad(R.eps_mse_loss(eps_req, t, noise=noise), eps_req)

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
    """The U-Net alone, run the way the Sampler runs it: the sampler's floor. -> (fn, setup s).
    On CUDA compiled and captured in a CUDA graph; on a CPU eager, as the Sampler is there."""
    t0 = time.perf_counter()
    if x.device.type != "cuda":
        net(x, t)
        return (lambda: net(x, t)), time.perf_counter() - t0
    fwd = torch.compile(net, fullgraph=True, dynamic=False)
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
        fast.run(batch=B, stop_after=2)  # compile and capture
        row["sampler_compile_s"], row["sampler_capture_s"] = fast.stats["warmup_s"], fast.stats["capture_s"]
        fast.run(batch=B, stop_after=p["steps"])
        row["sampler_ms"] = fast.stats["ms_per_step"]
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
        row["methods"] = bench_methods(net, sched, B, p, row["unet_ms"], device) if B == max(p["batches"]) else []
        if "diffusers_ms" in row:
            row["speedup_vs_diffusers"] = row["diffusers_ms"] / row["sampler_ms"]
        if rates.get("matmul_tflops"):
            row["mfu"] = flops * B / (row["sampler_ms"] * 1e-3) / (rates["matmul_tflops"] * 1e12)
        rows.append(row)
    return rows


METHOD_STEPS = (("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpm++2m", 20), ("dpm++2m", 10),
                ("sde-dpm++2m", 20))


def bench_methods(net, sched, B: int, p: dict, unet_ms: float, device) -> list:
    """images/s of each method at its typical step counts: the measured ms/step of its own
    compiled (and on CUDA graphed) step, times its steps; and its per-step overhead over the
    model alone."""
    rows = []
    for method, steps in METHOD_STEPS:
        steps = min(steps, sched.T)
        if (method, steps) in {(r["method"], r["steps"]) for r in rows}:
            continue
        s = Sampler(net, sched, method=method, steps=steps, progress=False)
        s.run(batch=B, stop_after=min(2, steps))  # compile and capture
        s.run(batch=B, stop_after=min(steps, p["steps"]))
        ms = s.stats["ms_per_step"]
        rows.append(dict(method=method, steps=steps, ms_per_step=ms, overhead_ms=ms - unet_ms,
                         images_per_s=B / (ms * 1e-3 * steps), batch=B))
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
    rows = []
    for fused in (True, False):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=10**9, batch_size=p["train_batch"], fused=fused, schedule="linear", T=sched.T)
        trainer = Trainer(UNet(c), data, cfg, device=device, progress=False)
        with K.value_checks(False):
            r = time_fn(trainer.train_step, device, warmup=2, reps=p["train_reps"])
            peak = peak_memory(trainer.train_step, device)
        rows.append(dict(impl="fused" if fused else "reference", batch=cfg.batch_size,
                         images_per_s=cfg.batch_size / (r["median_ms"] * 1e-3), peak_bytes=peak, **r))
    return rows


# ------------------------------------------------------------------ report


NOT_ON_CPU = ("not measured on a CPU: no copy-bandwidth or matmul rate (no GPU), no CUDA graph capture, "
              "no NVML energy; the columns that need them read '-'")


def _f(v, fmt: str, width: int) -> str:
    return f"{v:{width}{fmt}}" if isinstance(v, (int, float)) and v is not None else f"{'-':>{width}}"


def print_report(rep: dict, out=None) -> None:
    out = out or sys.stdout
    d, c = rep["device"], rep["config"]
    out.write(f"fastddpm.bench on {d['name']}  (torch {rep['env']['torch']}, triton {rep['env']['triton']})\n")
    out.write(f"config: U-Net {c['unet']} ({c['unet_params'] / 1e6:.2f} M parameters, {c['image']} images), sampler batches "
              f"{c['batches']}, {c['steps']} timed steps; kernel shapes {c['kernel_shapes']}\n")
    for note in rep["notes"]:
        out.write(f"note: {note}\n")
    if d.get("copy_gbs"):
        out.write(f"copy bandwidth {d['copy_gbs']:.0f} GB/s measured"
                  + (f", {d['theoretical_bandwidth_gbs']:.0f} GB/s theoretical" if d.get("theoretical_bandwidth_gbs") else "")
                  + (f"; bf16 matmul {d['matmul_tflops']:.0f} TFLOP/s measured" if d.get("matmul_tflops") else "") + "\n")
    if rep["kernels"]:
        out.write("\nkernels                                     median ms     GB/s  of copy\n")
        for r in rep["kernels"]:
            frac = f"{100 * r['frac_copy_bw']:6.1f}%" if r.get("frac_copy_bw") else f"{'-':>7}"
            name = f"{r['op']:<12} {r['impl']:<8} {r['dtype']:<8} {'x'.join(map(str, r['shape'])):<14}"
            out.write(f"{name} {r['median_ms']:9.4f} {r['gbs']:8.2f}  {frac}\n")
    if rep["sampler"]:
        out.write("\nsampler (ms/step; images/s of a full 1000-step run)   U-Net alone   fastddpm   reference   diffusers     MFU\n")
        for r in rep["sampler"]:
            mfu = f"{100 * r['mfu']:6.1f}%" if r.get("mfu") else f"{'-':>7}"
            out.write(f"batch {r['batch']:<5} ms/step                          {_f(r['unet_ms'], '.3f', 11)} {_f(r['sampler_ms'], '.3f', 10)} "
                      f"{_f(r['reference_ms'], '.2f', 11)} {_f(r.get('diffusers_ms'), '.2f', 11)} {mfu}\n")
            out.write(f"{'':11} images/s                         {_f(r['unet_images_per_s'], '.3g', 11)} {_f(r['sampler_images_per_s'], '.3g', 10)} "
                      f"{_f(r['reference_images_per_s'], '.3g', 11)} {_f(r.get('diffusers_images_per_s'), '.3g', 11)}\n")
            capture = f"capture {r['sampler_capture_s']:.2f} s" if r.get("sampler_capture_s") else "capture -"
            out.write(f"{'':11} warm-up (compile) {r['sampler_compile_s']:.1f} s, {capture}\n")
            for mrow in r.get("methods", []):
                out.write(f"{'':11} {mrow['method']:<12} {mrow['steps']:>5} steps: {mrow['ms_per_step']:9.3f} ms/step "
                          f"(+{mrow['overhead_ms']:.3f} over the U-Net)  {mrow['images_per_s']:.3g} images/s\n")
    for r in rep["train"]:
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] is not None else "-"
        out.write(f"\ntrain step {r['impl']:<9} batch {r['batch']}: {r['images_per_s']:.3g} images/s, peak {mem}")
    out.write("\n")


def plot(rows: list, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    batches = [r["batch"] for r in rows]
    for key, label in (("sampler", "fastddpm Sampler"), ("unet", "U-Net alone (floor)"), ("reference", "reference"), ("diffusers", "diffusers")):
        ys = [r.get(f"{key}_images_per_s") for r in rows]
        if all(y is not None for y in ys):
            ax.plot(batches, ys, marker="o", label=label)
            if len(rows) == 1:  # one batch size: say the value, a lone dot says little
                ax.annotate(f"{ys[0]:.3g}", (batches[0], ys[0]), textcoords="offset points", xytext=(6, 0), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="batch (images)", ylabel="images/s (1000-step run)")
    ax.xaxis.set_major_locator(FixedLocator(batches))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(b) for b in batches])
    if len(batches) == 1:
        ax.set_xlim(batches[0] / 2, batches[0] * 2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def default_folder(device_name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in device_name)[:40].strip("-") or "device"
    return Path("bench-results") / f"{time.strftime('%Y-%m-%d')}-{safe}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m fastddpm.bench", description=__doc__.split("\n")[0],
        epilog="On a CPU (a smoke run, not the product's target): a small built-in U-Net "
               f"({TINY_UNET.sample_size}x{TINY_UNET.sample_size}, base {TINY_UNET.base_channels}), sampler batches 1 and 8, "
               "10 timed steps, kernel shapes 64x3x32x32 and 2x3x256x256 (--quick: batch 2, 2 steps, 8x3x32x32). On a GPU: "
               "the CIFAR-10 U-Net, batches 1 and 1024, 100 timed steps, kernel shapes 1024x3x32x32 and 128x3x256x256.")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--batch", default=None, help="sampler batch sizes, comma list (default 1,1024 on GPU, 1,8 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed sampler steps per measurement")
    ap.add_argument("--out", default=None, help="results folder (default bench-results/<date>-<device>/: bench.json, bench.png)")
    ap.add_argument("--json", default=None, help="write the JSON here instead")
    ap.add_argument("--plot", default=None, help="write the PNG plot here instead")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    ap.add_argument("--static", action="store_true",
                    help="the static cost report instead: every kernel variant compiled for sm_90 and sm_80 and read "
                         "from its SASS (registers, instructions, bytes, predicted time on H200/H100/A100); no GPU needed")
    ap.add_argument("--quality", action="store_true", help="the quality-per-model-evaluation table instead (needs --data)")
    ap.add_argument("--data", default=None, help="--quality: digits or fashion-mnist")
    ap.add_argument("--train", action="store_true", help="--quality --data digits: retrain the model first (README command)")
    args = ap.parse_args(argv)
    if args.static:
        from . import staticcost

        rows = staticcost.main(args.json)
        if args.json:
            print(f"wrote {args.json}")
        return {"schema": "fastddpm.static/1", "rows": rows}
    if args.quality:
        from . import quality

        return quality.main(args.data, out=args.out, train=args.train)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if any(s not in SECTIONS for s in only):
        ap.error(f"--only: expected a comma list of {SECTIONS}, got {args.only!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    p = plan(device, args.quick)
    if args.batch:
        try:
            p["batches"] = [int(b) for b in args.batch.split(",")]
        except ValueError:
            ap.error(f"--batch: expected a comma list of ints, got {args.batch!r}")
        if min(p["batches"]) < 1:
            ap.error("--batch: expected positive batch sizes")
    if args.steps is not None:
        if args.steps < 1:
            ap.error("--steps: expected a positive int")
        p["steps"] = args.steps
    sched = Schedule.linear()
    nvml = NVML(device)
    load = host_load()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    rep = {"schema": SCHEMA, "env": environment(), "device": {"name": name, **nvml.facts()}, "host": load,
           "kernels": [], "sampler": [], "train": [], "notes": [], "plot": None}
    unet = UNet(p["unet"])
    rep["config"] = {"unet": "CIFAR-10 (Ho et al.)" if p["unet"] == UNetConfig.cifar10() else "small built-in (CPU)",
                     "unet_params": unet.num_parameters(), "image": f"{p['unet'].in_channels}x{p['unet'].sample_size}x{p['unet'].sample_size}",
                     "batches": p["batches"], "steps": p["steps"], "kernel_shapes": ["x".join(map(str, s)) for s in p["kernel_shapes"]]}
    if device.type == "cpu":
        rep["notes"].append("CPU run: a smoke test of the benchmark, not the product's target (fastddpm is measured on GPUs)")
        rep["notes"].append(NOT_ON_CPU)
    if load["overloaded"]:
        rep["notes"].append(f"WARNING: the host is busy (load {load['load_1min']:.1f} on {load['cpus']} CPUs at the start): "
                            f"other work shares these cores, and the timings below may be far off")
    rates = {}
    if device.type == "cuda":
        rates = {"copy_gbs": copy_bandwidth(device, 2**30), "matmul_tflops": matmul_rate(device, 8192, torch.bfloat16)}
    rep["device"].update(rates)
    from .sampler import _compile_errors_explained

    with _compile_errors_explained():
        if "kernels" in only:
            rep["kernels"] = bench_kernels(p, device, sched, rates)
        if "sampler" in only:
            rep["sampler"] = bench_sampler(p, device, sched, rates, nvml)
        if "train" in only:
            rep["train"] = bench_train(p, device, sched)
    sync(device)
    folder = Path(args.out) if args.out else default_folder(name)
    json_path = Path(args.json) if args.json else folder / "bench.json"
    plot_path = Path(args.plot) if args.plot else json_path.with_suffix(".png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    if rep["sampler"]:
        rep["plot"] = plot(rep["sampler"], plot_path)
    print_report(rep)
    json_path.write_text(json.dumps(rep, indent=1, default=str))
    print(f"wrote {json_path}" + (f" and {rep['plot']}" if rep["plot"] and rep["plot"].endswith(".png") else ""))
    return rep


if __name__ == "__main__":
    main()
