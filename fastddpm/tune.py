"""python -m fastddpm.tune: search a sampler's timesteps for one model (GITS), as a plan file.

    python -m fastddpm.tune --model digits --method ipndm --steps 5 --out plans/digits-ipndm-5.json
    python -m fastddpm.generate --model digits --plan plans/digits-ipndm-5.json --n 2000 --out samples/d

How (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", GITS):
the teacher is UniPC-3 on a fine trailing grid (--grid G points, --refine r teacher steps
between two of them), run from the priors of the tuning seeds; its state x_g at every grid point
is kept. The cost of jumping from grid point i to j in one step is the mean squared distance of
a first-order (DDIM) step from the teacher's x_i to the teacher's x_j; dynamic programming finds
the N jumps from the first grid point to the clean end of least total cost, and those N
timesteps are the plan. The method's own coefficients follow from them, as for any grid.

What it matches: the teacher's trajectory in pixels, not the shipped feature network, because
that network is what the quality tables are measured in: a plan fitted to it could improve the
number without improving the images. Tuning seeds are the block starting at 10^12 (TUNE_SEED_BASE),
never the evaluation seeds 0..n-1.

The plan records the model's hash, the schedule, the prediction, the method, the timesteps, the
teacher, the seeds, the objective (the per-sample RMSE of the N-step chain to the teacher's
endpoint on the tuning seeds) before (the method's default trailing grid) and after, the command
and its wall time. Written atomically: an interrupted run leaves no file.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import cli
from .core import tuned
from .core.plan import METHODS, Method, timesteps as grid_timesteps
from .io import checkpoint as ckpt

TEACHER = ("unipc", dict(order=3))
CACHE = Path.home() / ".cache" / "fastddpm" / "tune"
DETERMINISTIC = ("ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm")


def _eps(net, schedule, x, t, prediction, labels=None):
    """ε̂(x, t) from the model's output in its own parameterization."""
    out = net(x, t) if labels is None else net(x, t, labels)
    out = out[:, : x.shape[1]]  # a learned-Σ model's prediction half
    ac = schedule.alphas_cumprod.to(x.device, torch.float64)[t].view(-1, 1, 1, 1)
    a, b = ac.sqrt(), (1 - ac).sqrt()
    if prediction == "epsilon":
        return out.double()
    if prediction == "v":
        return a * out.double() + b * x.double()
    return (x.double() - a * out.double()) / b  # "sample": x̂_0


def costs(states: torch.Tensor, eps: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """(G+1, G+1) cost[i, j], i < j: mean squared distance of one DDIM step from the teacher's state at
    grid point i to its state at j (point G: the clean end, ᾱ = 1). states (G+1, M, D), eps (G, M, D),
    alphas (G+1,) alphas_cumprod of each point."""
    G = eps.shape[0]
    c = torch.full((G + 1, G + 1), float("inf"), dtype=torch.float64)
    a, b = alphas.sqrt(), (1 - alphas).sqrt()
    for i in range(G):
        x0 = (states[i] - b[i] * eps[i]) / a[i]
        for j in range(i + 1, G + 1):
            pred = a[j] * x0 + b[j] * eps[i]
            c[i, j] = (pred - states[j]).pow(2).mean()
    return c


def shortest(c: torch.Tensor, N: int) -> tuple:
    """(total, path): the N jumps 0 = p_0 < p_1 < ... < p_N = G of least total cost c[p_k, p_k+1]."""
    G = c.shape[0] - 1
    if not 1 <= N <= G:
        raise ValueError(f"steps: expected 1 to {G} (the grid's points), got {N}")
    inf = float("inf")
    D = [[inf] * (G + 1) for _ in range(N + 1)]
    back = [[-1] * (G + 1) for _ in range(N + 1)]
    D[0][0] = 0.0
    cl = c.tolist()
    for n in range(1, N + 1):
        for j in range(1, G + 1):
            best, arg = inf, -1
            for i in range(j):
                v = D[n - 1][i] + cl[i][j]
                if v < best:
                    best, arg = v, i
            D[n][j], back[n][j] = best, arg
    path, j = [G], G
    for n in range(N, 0, -1):
        j = back[n][j]
        path.append(j)
    return D[N][G], path[::-1]


def trajectories(net, schedule, info, fine, refine, seed_list, batch, dev, prediction, cache=None, say=lambda t: None):
    """(states (G+1, M, D), eps (G, M, D)) float64: the teacher's state at each grid point (and its
    endpoint last) and ε̂ there, for the tuning seeds; cached in `cache` by the model's hash and the grid."""
    from safetensors.torch import load_file, save_file

    from .sampling.sampler import Sampler

    G, teacher_steps = len(fine), len(fine) * refine
    path = None if cache is None else Path(cache) / (
        f"tune-teacher-{info['hash']}-g{G}r{refine}-n{len(seed_list)}-s{int(seed_list[0])}.safetensors")
    if path is not None and path.exists():
        d = load_file(str(path))
        return d["states"], d["eps"]
    t0 = time.perf_counter()
    teacher = Sampler(net, schedule, method=TEACHER[0], steps=teacher_steps, compile=False, progress=False, device=dev,
                      **TEACHER[1])
    end = teacher.run(seeds=seed_list, max_batch=batch, record=list(range(0, teacher_steps, refine)))
    states = torch.stack([teacher.recorded[k].flatten(1).double().cpu() for k in range(0, teacher_steps, refine)] +
                         [end.flatten(1).double().cpu()])
    say(f"tune: teacher done in {time.perf_counter() - t0:.0f} s\n")
    eps = []
    with torch.no_grad():
        for g, t in enumerate(fine):
            x = teacher.recorded[g * refine]
            e = torch.cat([_eps(net, schedule, x[i : i + batch], torch.full((min(batch, len(x) - i),), t, device=dev), prediction)
                           for i in range(0, len(x), batch)])
            eps.append(e.flatten(1).cpu())
    eps = torch.stack(eps)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"states": states.contiguous(), "eps": eps.contiguous()}, str(tmp))
        tmp.replace(path)
    return states, eps


def tune(model: str, method: str = "dpm++2m", steps: int = 5, *, grid: int = 100, refine: int = 5, seeds: int = 256,
         seed_base: int = tuned.TUNE_SEED_BASE, batch: int = 256, options: dict = None, command: str = None,
         progress: bool = True, device=None, cache=None) -> dict:
    """A tuned plan (a dict, sealed with its hash) of `method` at `steps` model evaluations for `model`.
    cache: a folder for the teacher's trajectories (the costly part), shared by every plan of the model."""
    from .models.loading import load_model
    from .sampling.sampler import Sampler

    if method not in DETERMINISTIC:
        raise ValueError(f"method: tune searches deterministic samplers' grids: one of {DETERMINISTIC}, got {method!r}")
    for name, v, lo in (("steps", steps, 1), ("grid", grid, 2), ("refine", refine, 1), ("seeds", seeds, 1), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if steps > grid:
        raise ValueError(f"steps: {steps} is more than the grid's {grid} points: raise --grid")
    if isinstance(seed_base, bool) or not isinstance(seed_base, int) or not 0 <= seed_base < 2**62:
        raise ValueError(f"seed_base: expected an int in [0, 2**62), got {seed_base!r}")
    options = dict(options or {})
    t0 = time.perf_counter()
    net, schedule, info = load_model(model)
    classes = getattr(getattr(net, "config", None), "num_classes", None)
    if classes:
        raise ValueError("model: tuning a class-conditional model's grid (with its guidance) is not supported yet; tune an "
                         "unconditional model")
    if grid * refine > schedule.T:
        raise ValueError(f"grid: {grid} points x {refine} teacher steps each is more than the schedule's T = {schedule.T}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev).eval()
    say = (lambda text: sys.stderr.write(text)) if progress else (lambda text: None)
    # the method as it runs by default on this model: its grid is the "before" (a check of every option too)
    base = Sampler(net, schedule, method=method, steps=steps, compile=False, progress=False, device=dev, **options)
    prediction = base.plan.method.prediction
    fine = grid_timesteps(schedule.T, Method("dpm++2m", steps=grid))  # the trailing grid of G points, descending
    teacher_steps = grid * refine
    teacher_grid = grid_timesteps(schedule.T, Method("dpm++2m", steps=teacher_steps))
    if teacher_grid[::refine] != fine:
        raise ValueError(f"grid: {grid} points are not every {refine}th of the teacher's trailing {teacher_steps} steps on "
                         f"T = {schedule.T}; choose a grid dividing T")
    seed_list = torch.arange(seeds, dtype=torch.int64) + seed_base
    say(f"tune: {info['source']} ({info['hash']}), {method} {steps} steps; teacher {TEACHER[0]}-{TEACHER[1]['order']} "
        f"{teacher_steps} steps on {seeds} seeds from {seed_base}; grid {grid}\n")
    states, eps = trajectories(net, schedule, info, fine, refine, seed_list, batch, dev, prediction, cache, say)
    end = states[-1]
    alphas = torch.cat([schedule.alphas_cumprod.double()[torch.tensor(fine)], torch.ones(1, dtype=torch.float64)])
    c = costs(states, eps, alphas)
    total, path = shortest(c, steps)
    found = [fine[p] for p in path[:-1]]

    def rmse(sampler):
        x = sampler.run(seeds=seed_list, max_batch=batch).flatten(1).double().cpu()
        return float((x - end).pow(2).mean(1).sqrt().mean())

    tuned_sampler = Sampler(net, schedule, method=method, timesteps=found, compile=False, progress=False, device=dev, **options)
    before, after = rmse(base), rmse(tuned_sampler)
    kept = after >= before  # the search's cost is a first-order step's: if the method itself does no better, keep its grid
    if kept:
        found, after = list(base.plan.timesteps), before
        tuned_sampler = base
    m = tuned_sampler.plan.method
    method_d = {"name": m.name, "steps": m.steps, **{k: v for k, v in options.items()}}
    for k in {"unipc": ("order", "solver_type", "corrector", "lower_order_final"), "ipndm": ("order",),
              "dpm++3m": ("lower_order_final",)}.get(m.name, ()):  # the options it ran with, stated
        method_d.setdefault(k, getattr(m, k))
    plan = tuned.sealed({
        "schema": tuned.SCHEMA, "model": info["source"], "model_hash": info["hash"],
        "schedule": tuned.schedule_id(schedule), "prediction": prediction, "method": method_d, "timesteps": found,
        "default_timesteps": list(base.plan.timesteps),
        "teacher": {"method": f"{TEACHER[0]}-{TEACHER[1]['order']}", "steps": teacher_steps, "grid": grid},
        "tune_seeds": {"start": seed_base, "count": seeds},
        "objective": {"metric": "per-sample RMSE of the chain's output to the teacher's endpoint, tuning seeds, pixels in [-1, 1]",
                      "before": round(before, 6), "after": round(after, 6), "dp_cost": total, "kept_default": kept},
        "command": command, "wall_s": round(time.perf_counter() - t0, 1),
    })
    say(f"tune: timesteps {found} (default {list(base.plan.timesteps)}"
        f"{': the search found no better grid, the default is kept' if kept else ''}); RMSE to the teacher "
        f"{before:.4f} -> {after:.4f} in {plan['wall_s']:.0f} s\n")
    return plan


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="any model generate takes (a run, a checkpoint, a shipped name, ...)")
    ap.add_argument("--method", default="dpm++2m", choices=DETERMINISTIC, help="the sampler to tune (default dpm++2m)")
    ap.add_argument("--steps", type=int, required=True, help="its budget: model evaluations")
    ap.add_argument("--order", type=int, default=None, help="unipc / ipndm: the order (their default otherwise)")
    ap.add_argument("--out", required=True, help="the plan file to write (JSON)")
    ap.add_argument("--grid", type=int, default=100, help="points of the fine grid searched (default 100)")
    ap.add_argument("--refine", type=int, default=5, help="teacher steps between two grid points (default 5)")
    ap.add_argument("--seeds", type=int, default=256, help="tuning seeds (default 256, from --seed-base)")
    ap.add_argument("--seed-base", type=int, default=tuned.TUNE_SEED_BASE,
                    help=f"the first tuning seed (default {tuned.TUNE_SEED_BASE}: far from evaluation's 0..n-1)")
    ap.add_argument("--eval-seeds", type=int, default=None, metavar="N",
                    help="the evaluation will use seeds 0..N-1: refused if the tuning seeds overlap them")
    ap.add_argument("--device", default=None, help="default: cuda if there is one, else cpu")
    ap.add_argument("--cache", default=None, metavar="DIR", help="keep the teacher's trajectories here, for the model's "
                    "next plans (default: ~/.cache/fastddpm/tune)")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    args = ap.parse_args(argv)
    if args.eval_seeds is not None and args.seed_base < args.eval_seeds:
        ap.error(f"--seed-base: tuning seeds {args.seed_base}..{args.seed_base + args.seeds - 1} overlap the evaluation seeds "
                 f"0..{args.eval_seeds - 1}: an improvement could be memorised noise")
    out = Path(args.out)
    if out.is_dir():
        ap.error(f"--out: {out} is a folder; expected a plan file to write")
    ckpt.check_can_create(out.parent, "--out")
    options = {"order": args.order} if args.order is not None else {}
    plan = tune(args.model, args.method, args.steps, grid=args.grid, refine=args.refine, seeds=args.seeds,
                seed_base=args.seed_base, options=options, device=args.device, cache=args.cache or CACHE,
                command="python -m fastddpm.tune " + " ".join(sys.argv[1:] if argv is None else argv))
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_atomic(out, (json.dumps(plan, indent=1) + "\n").encode())
    print(f"wrote {out}")
    return plan


if __name__ == "__main__":
    cli.run("python -m fastddpm.tune", main)
