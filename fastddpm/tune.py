"""python -m fastddpm.tune: fit a sampler to one model (its timesteps, GITS; its coefficients, --learn), as a plan file.

    python -m fastddpm.tune --model digits --method ipndm --steps 5 --out plans/digits-ipndm-5.json
    python -m fastddpm.tune --model digits --method dpm++2m --steps 5 --learn 100 --out plans/digits-2m-5-learned.json
    python -m fastddpm.tune --model fashion-mnist-cond --guidance 2 --method dpm++2m --steps 6 --out plans/cond-2m-6.json
    python -m fastddpm.generate --model digits --plan plans/digits-ipndm-5.json --n 2000 --out samples/d

How (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", GITS):
the teacher is UniPC-3 on a fine trailing grid (--grid G points, --refine r teacher steps
between two of them), run from the priors of the tuning seeds; its state x_g at every grid point
is kept. The cost of jumping from grid point i to j in one step is the mean squared distance of
a first-order (DDIM) step from the teacher's x_i to the teacher's x_j; dynamic programming finds
the N jumps from the first grid point to the clean end of least total cost, and those N
timesteps are the plan. The method's own coefficients follow from them, as for any grid.

--learn ITERS (S4S / LD3-style, Frankel et al. 2025, Tong et al. 2024): then each step's weights
(of x̂_0, x_t, ε̂ and the history slots: the kernel row's columns) get a learned factor exp(θ),
found by Adam through the whole N-step chain (`chain`, plain PyTorch, backpropagating through the
model) to the teacher's endpoints. It learns on 3/4 of the tuning seeds and keeps the iterate of
least error on the other 1/4, which it never descends on. Factors, not free coefficients: at
most 6 N numbers, every one 1 at the start (the method as it is), so 256 seeds cannot be
memorised and a zero weight stays zero. The timesteps stay the searched ints: the model is
evaluated where the schedule defines it. The factors act on the ε rows, so a v or x₀ model gets
them too. A conditional model is tuned at its --guidance w, with the labels generate gives
(seed mod num_classes); the plan then sets that w.

What it matches: the teacher's trajectory in pixels, not the shipped feature network, because
that network is what the quality tables are measured in: a plan fitted to it could improve the
number without improving the images. Tuning seeds are the block starting at 10^12 (TUNE_SEED_BASE),
never the evaluation seeds 0..n-1.

The plan records the model's hash, the schedule, the prediction, the method (and w), the timesteps
(and the learned factors, with their held-out errors before and after), the teacher, the seeds, the objective (the per-sample RMSE of the N-step chain to the teacher's
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
from .core.plan import METHODS, SCALED, Method, timesteps as grid_timesteps
from .io import checkpoint as ckpt
from .kernels.tables import GUIDE

TEACHER = ("unipc", dict(order=3))
CACHE = Path.home() / ".cache" / "fastddpm" / "tune"
DETERMINISTIC = ("ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm")


def _eps(net, schedule, x, t: int, prediction, labels=None, w: float = 1.0):
    """ε̂(x, t) float64 from the model's (guided) output in its own parameterization."""
    out = model_output(net, x, t, labels, w, x.shape[1]).double()
    ac = float(schedule.alphas_cumprod.double()[t])
    a, b = ac**0.5, (1 - ac) ** 0.5
    if prediction == "epsilon":
        return out
    if prediction == "v":
        return a * out + b * x.double()
    return (x.double() - a * out) / b  # "sample": x̂_0


def model_output(net, x, t, labels, w: float, C: int):
    """The output a step combines: the (guided) prediction half, as the kernel forms it (kernels/step.py)."""
    tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)
    if labels is None:
        return net(x, tt)[:, :C]
    if w == 1.0:
        return net(x, tt, labels)[:, :C]
    null = torch.full_like(labels, net.config.num_classes)
    if w == 0.0:
        return net(x, tt, null)[:, :C]
    mc, mu = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))[:, :C].chunk(2)
    return mu + w * (mc - mu)


def chain(net, plan, x, scales=None, labels=None) -> torch.Tensor:
    """The deterministic plan's N-step chain from the priors x, in plain PyTorch, differentiable in `scales`
    ((K, len(SCALED)) factors on the ε rows, as Method.scales) and in x: the reference of a refined plan,
    and what `learn` descends through. Each step is the kernel's row (kernels/step.py):
        x̂_0 = X0_X x − X0_EPS m (clamped when clipping)
        x_s = C_X0 x̂_0 + C_X x + C_EPS m + Σ_j C_Hj h_j,  storing x̂_0 (or ε̂ = E_X x + E_M m)."""
    import dataclasses

    from . import kernels as K
    from .core.plan import eps_rows, scaled
    from .kernels.tables import C_EPS, C_X, C_X0, E_M, E_X, GUIDE, HISTORY, X0_EPS, X0_X

    m = plan.method
    if plan.stochastic:
        raise ValueError(f"plan: {m.label()} adds noise; chain runs deterministic plans")
    rows = eps_rows(plan.schedule, dataclasses.replace(m, scales=None))
    if scales is not None:
        rows = scaled(rows, scales)
    rows = K.for_prediction(rows, m.prediction).to(x.dtype)
    w = plan.rows[:, int(GUIDE)].tolist()
    C = x.shape[1]
    hist = []
    for k, t in enumerate(plan.timesteps):
        r = rows[k]
        out = model_output(net, x, t, labels, w[k], C).to(x.dtype)
        x0 = r[int(X0_X)] * x - r[int(X0_EPS)] * out
        if m.clip:
            x0 = x0.clamp(-1, 1)
        y = r[int(C_X0)] * x0 + r[int(C_X)] * x + r[int(C_EPS)] * out
        for j, col in enumerate(HISTORY[: plan.history], start=1):
            if len(hist) >= j:
                y = y + r[int(col)] * hist[-j]
        if plan.history:
            hist.append(r[int(E_X)] * x + r[int(E_M)] * out if plan.basis == "eps" else x0)
        x = y
    return x


def learn(net, plan, priors, targets, labels=None, *, iters: int = 100, lr: float = 0.01, val: float = 0.25,
          batch: int = 256, say=lambda t: None) -> tuple:
    """Learned factors on the plan's weights (S4S / LD3-style: gradient descent through the N-step chain to the
    teacher's endpoints, which are fixed). The factors are exp(θ), θ = 0 at the start (the plan as it is); Adam
    on the mean per-sample squared error over the first 1 − val of the seeds, full batch (deterministic),
    accumulated over micro-batches of `batch`; the θ of least error on the last `val` of the seeds (never
    descended on) is kept. Returns (scales (K, len(SCALED)) float64, record: the errors before and after on both
    parts and the iteration kept)."""
    from .core.plan import SCALED

    M = priors.shape[0]
    n_val = max(1, int(round(M * val)))
    if M - n_val < 1:
        raise ValueError(f"seeds: {M} tuning seeds leave none to learn on beside {n_val} held out: raise --seeds")
    parts = {"train": slice(0, M - n_val), "val": slice(M - n_val, M)}
    theta = torch.zeros(plan.K, len(SCALED), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    flags = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in flags:  # gradients flow through the model to x, never into its weights
        p.requires_grad_(False)
    try:
        return _descend(theta, opt, parts, _error_fn(net, plan, priors, targets, labels, theta, parts, batch), iters, lr,
                        M, n_val, say)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _error_fn(net, plan, priors, targets, labels, theta, parts, batch):
    """error(part, grad): the mean per-sample squared error of the chain on a part of the seeds, backpropagated
    into theta when grad (accumulated over micro-batches of `batch`)."""

    def error(part, grad: bool) -> float:
        sl = parts[part]
        n = sl.stop - sl.start
        total = 0.0
        for i in range(sl.start, sl.stop, batch):
            j = min(i + batch, sl.stop)
            lab = None if labels is None else labels[i:j]
            with torch.set_grad_enabled(grad):
                out = chain(net, plan, priors[i:j], theta.exp(), lab)
                e = (out.double() - targets[i:j]).flatten(1).pow(2).mean(1).sum() / n
                if grad:
                    e.backward()
            total += float(e.detach())
        return total

    return error


def _descend(theta, opt, parts, error, iters, lr, M, n_val, say) -> tuple:
    start = {part: error(part, False) for part in parts}
    best, best_theta, best_it = start["val"], theta.detach().clone(), 0
    t0 = time.perf_counter()
    for it in range(1, iters + 1):
        opt.zero_grad()
        error("train", True)
        opt.step()
        v = error("val", False)
        if v < best:
            best, best_theta, best_it = v, theta.detach().clone(), it
        if it % 10 == 0 or it == iters:
            say(f"tune: learn {it}/{iters}: held-out MSE {v:.4g} (start {start['val']:.4g}, best {best:.4g} at {best_it}); "
                f"{time.perf_counter() - t0:.0f} s\n")
    with torch.no_grad():
        theta.copy_(best_theta)
    end = {part: error(part, False) for part in parts}
    record = {"iters": iters, "lr": lr, "kept_iter": best_it, "learn_seeds": M - n_val, "held_out_seeds": n_val,
              "mse_before": {k: round(v, 8) for k, v in start.items()}, "mse_after": {k: round(v, 8) for k, v in end.items()}}
    return best_theta.exp(), record


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


def trajectories(net, schedule, info, fine, refine, seed_list, batch, dev, prediction, cache=None, say=lambda t: None,
                 labels=None, guidance=None):
    """(states (G+1, M, D), eps (G, M, D)) float64: the teacher's state at each grid point (and its
    endpoint last) and ε̂ there, for the tuning seeds (a conditional model: with their labels, guided by w);
    cached in `cache` by the model's hash, the grid, the seeds and w."""
    from safetensors.torch import load_file, save_file

    from .sampling.sampler import Sampler

    G, teacher_steps = len(fine), len(fine) * refine
    path = None if cache is None else Path(cache) / (
        f"tune-teacher-{info['hash']}-g{G}r{refine}-n{len(seed_list)}-s{int(seed_list[0])}"
        f"{'' if labels is None else f'-w{guidance}'}.safetensors")
    if path is not None and path.exists():
        d = load_file(str(path))
        return d["states"], d["eps"]
    t0 = time.perf_counter()
    teacher = Sampler(net, schedule, method=TEACHER[0], steps=teacher_steps, compile=False, progress=False, device=dev,
                      guidance=guidance, **TEACHER[1])
    end = teacher.run(seeds=seed_list, labels=labels, max_batch=batch, record=list(range(0, teacher_steps, refine)))
    states = torch.stack([teacher.recorded[k].flatten(1).double().cpu() for k in range(0, teacher_steps, refine)] +
                         [end.flatten(1).double().cpu()])
    say(f"tune: teacher done in {time.perf_counter() - t0:.0f} s\n")
    eps = []
    with torch.no_grad():
        for g, t in enumerate(fine):
            x = teacher.recorded[g * refine]
            w = teacher.plan.rows[g * refine, int(GUIDE)].item()
            e = torch.cat([_eps(net, schedule, x[i : i + batch], t, prediction, None if labels is None else labels[i : i + batch], w)
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
         seed_base: int = tuned.TUNE_SEED_BASE, batch: int = 256, options: dict = None, guidance: float = None,
         learn_iters: int = 0, lr: float = 0.01, command: str = None, progress: bool = True, device=None,
         cache=None) -> dict:
    """A tuned plan (a dict, sealed with its hash) of `method` at `steps` model evaluations for `model`.
    guidance: a class-conditional model's w (None: its plain conditional output); each tuning seed s takes
    the label s mod num_classes, as generate's images do. learn_iters > 0: then learn factors on the found
    grid's weights (`learn`) for that many Adam steps at `lr`.
    cache: a folder for the teacher's trajectories (the costly part), shared by every plan of the model."""
    from .models.loading import load_model
    from .sampling.sampler import Sampler

    if method not in DETERMINISTIC:
        raise ValueError(f"method: tune searches deterministic samplers' grids: one of {DETERMINISTIC}, got {method!r}")
    for name, v, lo in (("steps", steps, 1), ("grid", grid, 2), ("refine", refine, 1), ("seeds", seeds, 1), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if isinstance(learn_iters, bool) or not isinstance(learn_iters, int) or learn_iters < 0:
        raise ValueError(f"learn_iters: expected an int >= 0 (0: the searched grid alone), got {learn_iters!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr: expected a learning rate in (0, 1), got {lr!r}")
    if steps > grid:
        raise ValueError(f"steps: {steps} is more than the grid's {grid} points: raise --grid")
    if isinstance(seed_base, bool) or not isinstance(seed_base, int) or not 0 <= seed_base < 2**62:
        raise ValueError(f"seed_base: expected an int in [0, 2**62), got {seed_base!r}")
    options = dict(options or {})
    t0 = time.perf_counter()
    net, schedule, info = load_model(model)
    classes = getattr(getattr(net, "config", None), "num_classes", None)
    if guidance is not None and not classes:
        raise ValueError("guidance: this model is unconditional (no num_classes); tune it without a guidance weight")
    if grid * refine > schedule.T:
        raise ValueError(f"grid: {grid} points x {refine} teacher steps each is more than the schedule's T = {schedule.T}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev).eval()
    say = (lambda text: sys.stderr.write(text)) if progress else (lambda text: None)
    # the method as it runs by default on this model: its grid is the "before" (a check of every option too)
    base = Sampler(net, schedule, method=method, steps=steps, compile=False, progress=False, device=dev, guidance=guidance,
                   **options)
    prediction = base.plan.method.prediction
    fine = grid_timesteps(schedule.T, Method("dpm++2m", steps=grid))  # the trailing grid of G points, descending
    teacher_steps = grid * refine
    teacher_grid = grid_timesteps(schedule.T, Method("dpm++2m", steps=teacher_steps))
    if teacher_grid[::refine] != fine:
        raise ValueError(f"grid: {grid} points are not every {refine}th of the teacher's trailing {teacher_steps} steps on "
                         f"T = {schedule.T}; choose a grid dividing T")
    seed_list = torch.arange(seeds, dtype=torch.int64) + seed_base
    labels = None if not classes else (seed_list % classes).to(dev)  # generate's default labels: seed mod num_classes
    say(f"tune: {info['source']} ({info['hash']}), {method} {steps} steps{'' if guidance is None else f' at w = {guidance:g}'}"
        f"; teacher {TEACHER[0]}-{TEACHER[1]['order']} {teacher_steps} steps on {seeds} seeds from {seed_base}; grid {grid}\n")
    states, eps = trajectories(net, schedule, info, fine, refine, seed_list, batch, dev, prediction, cache, say,
                               labels=labels, guidance=guidance)
    end = states[-1]
    alphas = torch.cat([schedule.alphas_cumprod.double()[torch.tensor(fine)], torch.ones(1, dtype=torch.float64)])
    c = costs(states, eps, alphas)
    total, path = shortest(c, steps)
    found = [fine[p] for p in path[:-1]]

    def rmse(sampler):
        x = sampler.run(seeds=seed_list, labels=labels, max_batch=batch).flatten(1).double().cpu()
        return float((x - end).pow(2).mean(1).sqrt().mean())

    def sampler_for(ts, scales=None):
        return Sampler(net, schedule, method=method, timesteps=ts, compile=False, progress=False, device=dev, guidance=guidance,
                       scales=scales, **options)

    tuned_sampler = sampler_for(found)
    before, after = rmse(base), rmse(tuned_sampler)
    kept = after >= before  # the search's cost is a first-order step's: if the method itself does no better, keep its grid
    if kept:
        found, after = list(base.plan.timesteps), before
        tuned_sampler = base
    scales, learned = None, None
    if learn_iters:
        from .kernels import STREAM_PRIOR, randn

        shape = (seeds, *base.shape)
        priors = randn(shape, seed_list, torch.zeros(seeds, dtype=torch.int64), STREAM_PRIOR).to(dev)  # the Sampler's x_T
        plan_g = sampler_for(found).plan
        say(f"tune: learning the coefficients of {len(found)} steps ({learn_iters} iterations)\n")
        factors, learned = learn(net, plan_g, priors, end.to(dev).view(shape), labels, iters=learn_iters, lr=lr,
                                 batch=batch, say=say)
        scales = [[round(v, 9) for v in row] for row in factors.tolist()]
        refined = sampler_for(found, scales)
        learned["rmse_grid"] = round(after, 6)
        after_learned = rmse(refined)
        if learned["kept_iter"] == 0:  # the held-out seeds never improved: the grid's own coefficients stay
            scales = None
        else:
            tuned_sampler, after = refined, after_learned
    m = tuned_sampler.plan.method
    method_d = {"name": m.name, "steps": m.steps, **{k: v for k, v in options.items()},
                **({} if guidance is None else {"guidance": float(guidance)})}
    for k in {"unipc": ("order", "solver_type", "corrector", "lower_order_final"), "ipndm": ("order",),
              "dpm++3m": ("lower_order_final",)}.get(m.name, ()):  # the options it ran with, stated
        method_d.setdefault(k, getattr(m, k))
    plan = tuned.sealed({
        "schema": tuned.SCHEMA, "model": info["source"], "model_hash": info["hash"],
        "schedule": tuned.schedule_id(schedule), "prediction": prediction, "method": method_d, "timesteps": found,
        **({} if scales is None else {"scales": {"columns": list(SCALED), "values": scales}}),
        "default_timesteps": list(base.plan.timesteps),
        "teacher": {"method": f"{TEACHER[0]}-{TEACHER[1]['order']}", "steps": teacher_steps, "grid": grid},
        "tune_seeds": {"start": seed_base, "count": seeds},
        "objective": {"metric": "per-sample RMSE of the chain's output to the teacher's endpoint, tuning seeds, pixels in [-1, 1]",
                      "before": round(before, 6), "after": round(after, 6), "dp_cost": total, "kept_default": kept,
                      **({} if learned is None else {"learned": learned})},
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
    ap.add_argument("--guidance", type=float, default=None, metavar="W",
                    help="a class-conditional model's guidance weight w, as generate --guidance (default: none, its plain "
                         "conditional output); the plan sets it")
    ap.add_argument("--learn", type=int, default=0, metavar="ITERS",
                    help="then learn factors on the found grid's coefficients by gradient descent through the chain, for "
                         "ITERS Adam steps (default 0: the searched grid alone; 100 is a good start)")
    ap.add_argument("--lr", type=float, default=0.01, help="--learn's learning rate (default 0.01)")
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
                seed_base=args.seed_base, options=options, guidance=args.guidance, learn_iters=args.learn, lr=args.lr,
                device=args.device, cache=args.cache or CACHE,
                command="python -m fastddpm.tune " + " ".join(sys.argv[1:] if argv is None else argv))
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_atomic(out, (json.dumps(plan, indent=1) + "\n").encode())
    print(f"wrote {out}")
    return plan


if __name__ == "__main__":
    cli.run("python -m fastddpm.tune", main)
