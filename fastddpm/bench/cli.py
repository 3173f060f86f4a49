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
import platform
import subprocess
import time
from pathlib import Path

import torch

from .. import kernels as K
from ..core.schedule import Schedule
from ..models.unet import UNet, UNetConfig
from ..sampling.sampler import compile_errors_explained
from .report import NOT_ON_CPU, plot, print_report
from .suites import TINY_UNET, bench_kernels, bench_loader, bench_sampler, bench_train
from .timing import NVML, copy_bandwidth, host_load, matmul_rate, sync

SCHEMA = "fastddpm.bench/1"
SECTIONS = ("kernels", "sampler", "train", "loader")


def plan(device: torch.device, quick: bool) -> dict:
    """Sizes per device: the product's target on a GPU, a small smoke run on a CPU."""
    if device.type == "cuda":
        return dict(
            kernel_shapes=[(1024, 3, 32, 32), (128, 3, 256, 256)] if not quick else [(1024, 3, 32, 32)],
            unet=UNetConfig.cifar10(), batches=[1, 1024], steps=100 if not quick else 30, ref_steps=10 if not quick else 3,
            train_batch=128, train_reps=20 if not quick else 5, energy_s=10.5 if not quick else 0.0, kernel_min_s=0.0,
            cpu_compiled=False, rounds=1,
        )
    return dict(
        kernel_shapes=[(64, 3, 32, 32), (2, 3, 256, 256)] if not quick else [(8, 3, 32, 32)],
        unet=TINY_UNET, batches=[1, 8] if not quick else [2], steps=50 if not quick else 2, ref_steps=3 if not quick else 1,
        train_batch=8 if not quick else 2, train_reps=5 if not quick else 2, energy_s=0.0,
        kernel_min_s=0.3 if not quick else 0.0,  # a CPU's timings wander: a median of hundreds of calls, not ten
        cpu_compiled=not quick,  # the Sampler with compile=True against the U-Net compiled alone (compiles: ~1 min)
        rounds=5 if not quick else 1,  # U-Net and sampler timed in turn, five times: medians
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


def default_folder(device_name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in device_name)[:40].strip("-") or "device"
    return Path("bench-results") / f"{time.strftime('%Y-%m-%d')}-{safe}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m fastddpm.bench", description=__doc__.split("\n")[0],
        epilog="On a CPU (a smoke run, not the product's target): a small built-in U-Net "
               f"({TINY_UNET.sample_size}x{TINY_UNET.sample_size}, base {TINY_UNET.base_channels}), sampler batches 1 and 8, "
               "50 timed steps, eager and (apart) compiled, kernel shapes 64x3x32x32 and 2x3x256x256 (--quick: batch 2, 2 "
               "steps, eager only, 8x3x32x32). On a GPU: "
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
    ap.add_argument("--guidance", action="store_true", help="--quality --data fashion-mnist: the classifier-free guidance "
                    "sweep of the shipped class-conditional model (w = 0, 1, 2, 3, 5 and an interval; FD against class accuracy)")
    ap.add_argument("--solvers", action="store_true", help="--quality: the multistep solvers (DPM-Solver++(3M), UniPC, "
                    "iPNDM) at 5, 6, 8 and 10 steps beside DDIM and DPM-Solver++(2M) and the DDPM 1000-step row, 2,000 "
                    "samples a row, each deterministic row's RMSE to the converged ODE, and the certify line (with "
                    "--guidance: the class-conditional model at w = 2)")
    ap.add_argument("--tuned", action="store_true", help="--quality --solvers: DDIM, DPM-Solver++(2M), UniPC-3 bh1 and "
                    "iPNDM-2 at 4-10 steps on their default grids and on grids fastddpm.tune searched for the model (DDIM "
                    "and 2M also with learned coefficients; with --guidance: the class-conditional model at w = 2)")
    ap.add_argument("--plan", action="append", default=None, metavar="FILE",
                    help="--quality --solvers: your tuned plan files (python -m fastddpm.tune) for the shipped model, each "
                         "beside its method on the default grid at the same budget (repeatable)")
    ap.add_argument("--inception", nargs="?", type=int, const=True, default=None, metavar="N",
                    help="--quality: Inception FID beside FD on the real floor, the DDPM 1000-step row and the best row of at "
                    "most 20 evaluations, each on its own N samples (default 5,000; more than the Inception's 2,048 "
                    "features, at least the table's; the DDPM row's seeds beyond the table's are drawn beside its shared "
                    "shards, resumable), the FID network found offline")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    args = ap.parse_args(argv)
    for flag in ("data", "train", "guidance", "solvers", "inception", "tuned", "plan"):
        if getattr(args, flag) not in (None, False) and not args.quality:
            ap.error(f"--{flag}: only with --quality")
    if args.static:
        from . import static as staticcost

        rows = staticcost.main(args.json)
        if args.json:
            print(f"wrote {args.json}")
        return {"schema": "fastddpm.static/1", "rows": rows}
    if args.quality:
        from . import quality

        if args.inception:
            from ..metrics import inception as fid_inception

            fid_inception.find()  # the network is here, or one line says how to get it, before any sampling
        return quality.main(args.data, out=args.out, train=args.train, guidance=args.guidance, solvers=args.solvers,
                            inception=args.inception, tuned=args.tuned, plans=args.plan)
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
           "kernels": [], "sampler": [], "train": [], "loader": [], "notes": [], "plot": None}
    unet = UNet(p["unet"])
    rep["config"] = {"unet": "CIFAR-10 (Ho et al.)" if p["unet"] == UNetConfig.cifar10() else "small built-in (CPU)",
                     "unet_params": unet.num_parameters(), "image": f"{p['unet'].in_channels}x{p['unet'].sample_size}x{p['unet'].sample_size}",
                     "batches": p["batches"], "steps": p["steps"], "kernel_shapes": ["x".join(map(str, s)) for s in p["kernel_shapes"]]}
    rep["device"]["cpu"] = device.type == "cpu"
    if device.type == "cpu":
        rep["notes"].append("CPU run: a smoke test of the benchmark, not the product's target (fastddpm is measured on GPUs)")
        rep["notes"].append("on a CPU the Sampler's step is the U-Net plus the fused update's torch twin; the twin's "
                            "addressed draw is torch.compile'd (kernels.cpu_twin), the reference and diffusers draw with "
                            "torch.randn; on CUDA the update is one Triton kernel"
                            + (". The 'compiled' line is the Sampler with compile=True, whose step graph takes the update "
                               "in (Inductor fuses it with the U-Net's output), against the U-Net compiled alone"
                               if p["cpu_compiled"] else "")
                            + (f"; the U-Net and each sampler are timed in turn, {p['rounds']} times, medians kept"
                               if p["rounds"] > 1 else ""))
        t0 = time.perf_counter()  # the twin's one-off compile (or its load from Inductor's cache), apart from the timings
        K.randn((2, 3, 4, 4), torch.tensor([0, 1]), torch.tensor([0, 1]), K.STREAM_PRIOR)
        rep["device"]["cpu_twin"] = K.cpu_twin_name()
        rep["device"]["cpu_twin_compile_s"] = round(time.perf_counter() - t0, 2)
        rep["notes"].append(f"the CPU twin's draw ({rep['device']['cpu_twin']}) was ready in "
                            f"{rep['device']['cpu_twin_compile_s']:.1f} s: a compile once per machine, then a load from "
                            f"Inductor's cache; not in the timings below")
        rep["notes"].append(NOT_ON_CPU)
    if load["overloaded"]:
        rep["notes"].append(f"WARNING: the host is busy (other processes kept {load['others_cpus']:.1f} of {load['cpus']} CPUs "
                            f"busy, {load['how']} at the start): "
                            f"other work shares these cores, and the timings below may be far off")
    rates = {}
    if device.type == "cuda":
        rates = {"copy_gbs": copy_bandwidth(device, 2**30), "matmul_tflops": matmul_rate(device, 8192, torch.bfloat16)}
    rep["device"].update(rates)
    with compile_errors_explained():
        if "kernels" in only:
            rep["kernels"] = bench_kernels(p, device, sched, rates)
        if "sampler" in only:
            rep["sampler"] = bench_sampler(p, device, sched, rates, nvml)
        if "train" in only:
            rep["train"] = bench_train(p, device, sched)
        if "loader" in only:
            rep["loader"] = bench_loader(p, device, rep["train"])
    sync(device)
    folder = Path(args.out) if args.out else default_folder(name)
    json_path = Path(args.json) if args.json else folder / "bench.json"
    plot_path = Path(args.plot) if args.plot else json_path.with_suffix(".png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    if rep["sampler"]:
        rep["plot"] = plot(rep["sampler"], plot_path, f"fastddpm sampler, {name} ({device.type}), "
                           f"{rep['env']['date'][:10]}")
    print_report(rep)
    json_path.write_text(json.dumps(rep, indent=1, default=str))
    print(f"wrote {json_path}" + (f" and {rep['plot']}" if rep["plot"] and rep["plot"].endswith(".png") else ""))
    return rep

