"""Quality per model evaluation: what each sampler buys, measured on real data.

    python -m fastddpm.bench --quality --data digits                # the shipped digits model
    python -m fastddpm.bench --quality --data digits --train        # retrain it first (docs/training.md's command)
    python -m fastddpm.bench --quality --data fashion-mnist         # the shipped fashion-mnist-small model
    python -m fastddpm.bench --quality --data fashion-mnist --guidance   # fashion-mnist-cond: the guidance sweep
    python -m fastddpm.bench --quality --data digits --solvers      # the multistep solvers at 5, 6, 8, 10 steps
    python -m fastddpm.bench --quality --data fashion-mnist --solvers --inception 5000   # + Inception FID (add_inception)

For every sampler configuration in CONFIGS: generate a fixed seed range through
fastddpm.generate, measure FD, KID, precision and recall against the held-out split with
fastddpm.metrics, time the generation on this machine. Writes OUT/quality.json, a markdown
table OUT/quality.md and a plot OUT/quality.png (FD against model evaluations, log scale,
one line per method). The figures compare samplers with each other in one feature
network's features; they are not Inception FID.

With --guidance, the rows are classifier-free guidance weights of the class-conditional model
(GUIDED_CONFIGS: w = 0 unconditional, 1 plain conditional, 2, 3, 5, at DPM-Solver++(2M) and
its SDE variant, 20 steps, plus one guidance interval), GUIDED_SAMPLES images a row with
labels k mod 10, and the table adds class accuracy (the feature network recovering the
asked-for class) and the mean per-class FD; the plot is FD against class accuracy. Every
row's FD carries a bootstrap standard deviation (the sample set resampled), the measure of
whether two rows are separated at all.
"""

import json
import re
import sys
import time
from pathlib import Path

CONFIGS = [  # (label, method, options): the table's rows
    ("DDPM 1000 (σ²=β)", "ddpm", dict(steps=1000, variance="large")),
    ("DDPM 1000 (posterior σ)", "ddpm", dict(steps=1000, variance="small")),
    ("DDPM respaced 100", "ddpm", dict(steps=100)),
    ("DDPM respaced 50", "ddpm", dict(steps=50)),
    ("DDPM respaced 20", "ddpm", dict(steps=20)),
    ("DDPM respaced 10", "ddpm", dict(steps=10)),
    ("DDIM η=0, 100", "ddim", dict(steps=100)),
    ("DDIM η=0, 50", "ddim", dict(steps=50)),
    ("DDIM η=0, 20", "ddim", dict(steps=20)),
    ("DDIM η=0, 10", "ddim", dict(steps=10)),
    ("DDIM η=1, 50", "ddim", dict(steps=50, eta=1.0)),
    ("DPM-Solver++(2M) 20", "dpm++2m", dict(steps=20)),
    ("DPM-Solver++(2M) 10", "dpm++2m", dict(steps=10)),
    ("SDE-DPM-Solver++(2M) 20", "sde-dpm++2m", dict(steps=20)),
]
SAMPLES = {"digits": 500, "fashion-mnist": 500}  # images a row: seeds 0 .. n-1
# rows a data set leaves out: on Fashion-MNIST the two 1000-step rows alone are 10^6 model
# evaluations, over an hour on a 2-core CPU (README, "Which sampler")
SKIP = {"fashion-mnist": ("DDPM 1000 (σ²=β)", "DDPM 1000 (posterior σ)")}
REPORTED = ("fd", "kid", "kid_std", "precision", "recall", "density", "coverage")  # a row's metrics
GUIDED_MODEL = {"fashion-mnist": "fashion-mnist-cond"}  # the shipped class-conditional model a data set's sweep samples
GUIDED_SAMPLES = 2000  # a row; at 500, four disjoint sets of one row scored FD 24.9-33.0 (README, the guidance sweep)
GUIDANCE_WEIGHTS = (0, 1, 2, 3, 5)
# Kynkäänniemi et al. (2024) guide EDM2 only for σ ∈ (0.28, 5.42]; on the linear schedule
# (σ_t = √((1 − ᾱ_t)/ᾱ_t)) that is t ∈ (81, 578]: 10 of the 20 trailing steps below
GUIDANCE_INTERVAL = (81, 578)
GUIDED_CONFIGS = [
    *((f"{name} 20, w={w}", method, dict(steps=20, guidance=float(w)))
      for name, method in (("DPM-Solver++(2M)", "dpm++2m"), ("SDE-DPM-Solver++(2M)", "sde-dpm++2m")) for w in GUIDANCE_WEIGHTS),
    (f"SDE-DPM-Solver++(2M) 20, w=3 in t ∈ ({GUIDANCE_INTERVAL[0]}, {GUIDANCE_INTERVAL[1]}]", "sde-dpm++2m",
     dict(steps=20, guidance=3.0, guidance_interval=GUIDANCE_INTERVAL)),
]
# --solvers: the multistep solvers at small budgets (issue 34's table), beside DDIM and DPM-Solver++(2M),
# SOLVER_SAMPLES images a row, FD with its bootstrap spread; on the guided model at its best w
SOLVER_BUDGETS = (5, 6, 8, 10)  # steps (an unguided step is one model evaluation)
SOLVER_METHODS = (("DDIM η=0", "ddim", {}), ("DPM-Solver++(2M)", "dpm++2m", {}), ("DPM-Solver++(3M)", "dpm++3m", {}),
                  ("UniPC-3 bh1", "unipc", dict(order=3, solver_type="bh1")), ("UniPC-3 bh2", "unipc", dict(order=3)),
                  ("iPNDM-4", "ipndm", dict(order=4)), ("iPNDM-2", "ipndm", dict(order=2)))
SOLVER_CONFIGS = [(f"{name} {n}", method, dict(steps=n, **o)) for name, method, o in SOLVER_METHODS for n in SOLVER_BUDGETS]
SOLVER_SAMPLES = 2000
# --inception's default: the Inception rows' own sample count (FID in 2,048 features needs more than 2,048 a side;
# pytorch-fid recommends at least that many, and a 5,000-set's features take about 11 CPU-minutes here)
INCEPTION_SAMPLES = 5000
# --tuned: each of these at each budget on its default grid and on the grid fastddpm.tune searched for the model
TUNED_BUDGETS = (4, 5, 6, 8, 10)
TUNED_METHODS = (("DDIM η=0", "ddim", {}), ("DPM-Solver++(2M)", "dpm++2m", {}), ("UniPC-3 bh1", "unipc",
                 dict(order=3, solver_type="bh1")), ("iPNDM-2", "ipndm", dict(order=2)))
# ... and these again on the searched grid with learned coefficients (tune --learn LEARN_ITERS at LEARN_LR)
LEARNED_METHODS = ("DDIM η=0", "DPM-Solver++(2M)")
LEARN_ITERS, LEARN_LR = 100, 0.05
SOLVER_GUIDANCE = 2.0  # fashion-mnist-cond's best w for a deterministic sampler in the guidance sweep (FD 25.9 at 2M-20)
# guided, a step is two model evaluations (a 2B batch): the baseline and the best of each family unguided
GUIDED_SOLVERS = ("DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3 bh2", "iPNDM-2")
CLASS_REPORTED = ("class_accuracy", "fd_per_class_mean")
# The row to match: DDPM with all 1000 steps, SOLVER_SAMPLES images (the same seeds as every row), in a folder
# shared by every table of the model (benchmarks/rows/MODEL/..., committed), written in resumable sittings by generate
DDPM_1000 = ("DDPM 1000 (σ²=β)", "ddpm", dict(steps=1000, variance="large"))
SHARED_ROWS = Path("benchmarks") / "rows"  # committed: a DDPM-1000 row takes CPU-hours, and every later table reuses it
# The converged ODE solution a deterministic chain's output is measured against, per sample, from the same
# priors (seeds 0 .. TEACHER_SAMPLES-1): UniPC-3 at 500 trailing steps; its own error is bounded by its distance
# to the same solver at 250 steps (reported beside: the measure's floor)
TEACHER = ("unipc", dict(order=3), 500)
TEACHER_SAMPLES = 256
DETERMINISTIC = ("ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm")  # (ddim with η = 0)
BOOTSTRAP = 20  # resamples of a row's sample set for the spread of its FD
DIGITS_RUN = ["--data", "digits"]  # the training command of docs/training.md, into OUT/model


def model_for(data: str, out: Path, train: bool = False) -> str:
    """The model a table measures: the shipped one (digits, fashion-mnist-small); with train,
    digits is trained again by docs/training.md's command into OUT/model (a finished run there is
    reused, an unfinished one resumed)."""
    if data == "fashion-mnist":
        if train:
            raise ValueError("train: only the digits model trains in a table run (fashion-mnist-small's command "
                             "is in fastddpm/models/weights/fashion-mnist-small.json)")
        return "fashion-mnist-small"
    if not train:
        return "digits"
    from ..io import checkpoint as ckpt
    from ..train import main as train_main

    run = out / "model"
    found = ckpt.newest_valid(run / "checkpoints") if (run / "checkpoints").is_dir() else None
    if found is None:
        train_main([*DIGITS_RUN, "--out", str(run)])
    elif found[2]["step"] < found[2]["train_config"]["steps"]:
        train_main([*DIGITS_RUN, "--out", str(run), "--resume"])
    return str(run)


def slug(label: str) -> str:
    """An ASCII folder name for a row: "DDIM η=0, 50" -> "DDIM-eta0-50"."""
    for a, b in (("σ²", "sigma2"), ("β", "beta"), ("η", "eta"), ("=", ""), ("+", "p")):
        label = label.replace(a, b)
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")


def evaluations(method: str, opts: dict, schedule=None) -> int:
    """Model evaluations an image costs: one a step, two on a guided step (w ∉ {0, 1}: the
    conditional and the unconditional half)."""
    from ..core.plan import Plan
    from ..core.schedule import Schedule

    if "plan" in opts:  # a tuned plan: its own method, timesteps and guidance
        from ..core import tuned

        opts = {k: v for k, v in tuned.method_options(tuned.read(opts["plan"])).items() if k != "method"}
    plan = Plan.build(schedule or Schedule.linear(), method, **opts)
    return plan.K + plan.kinds.count("guided")


def fd_spread(images, data: str, rounds: int = BOOTSTRAP, seed: int = 0) -> float:
    """The bootstrap standard deviation of the FD of `images` (uint8 batches) against the
    held-out split: the sample set resampled with replacement `rounds` times (seeded), the
    reference fixed. Two rows whose FDs differ by less than about twice this are not separated."""
    import torch

    from .. import metrics

    s = metrics.FeatureStream(data)
    for batch in images:
        s.add_uint8(batch)
    f = s.all().double()
    mu, cov = metrics.reference_features(data).moments.mean_cov()
    g = torch.Generator().manual_seed(seed)
    fds = []
    for _ in range(rounds):
        x = f[torch.randint(len(f), (len(f),), generator=g)]
        fds.append(metrics.frechet(x.mean(0), torch.cov(x.T), mu, cov))
    return float(torch.tensor(fds).std())


def deterministic(method: str, opts: dict) -> bool:
    """A chain that solves the probability-flow ODE (no noise drawn): its output has a converged counterpart."""
    return method in DETERMINISTIC and not opts.get("eta")


def _rmse(a, b):
    """Per-sample root-mean-square difference (images in [-1, 1]) -> (mean, std) over the samples."""
    e = (a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt()
    return float(e.mean()), float(e.std()) if len(e) > 1 else 0.0


class Teacher:
    """The converged ODE solutions of one model (and guidance) for seeds 0 .. n−1: TEACHER's solver at
    its steps, cached under OUT (keyed by the model's hash, the guidance and n); `error(method, opts)`
    is a chain's per-sample RMSE to it from the same priors."""

    def __init__(self, model: str, out: Path, n: int = TEACHER_SAMPLES, guidance=None, steps: int = None):
        import torch
        from safetensors.torch import load_file, save_file

        from ..models.loading import load_model

        self.net, self.schedule, info = load_model(model)
        self.guidance, self.n = guidance, n
        self.seeds = torch.arange(n)
        classes = getattr(getattr(self.net, "config", None), "num_classes", None)
        self.labels = self.seeds % classes if classes else None  # generate's default labels: seed k gets class k mod N
        method, opts, steps = TEACHER[0], TEACHER[1], steps or TEACHER[2]
        path = out / f"teacher-{info['hash']}-{method}{steps}-n{n}-w{guidance}.safetensors"
        if path.exists():
            d = load_file(str(path))
            self.x, self.self_rmse = d["x"], float(d["self_rmse"])
        else:
            self.x = self.run(method, dict(opts, steps=steps))
            self.self_rmse = _rmse(self.run(method, dict(opts, steps=steps // 2)), self.x)[0]
            out.mkdir(parents=True, exist_ok=True)
            save_file({"x": self.x.contiguous(), "self_rmse": torch.tensor(self.self_rmse, dtype=torch.float64)}, str(path))
        self.label = f"{method}-{opts.get('order', '')} {steps} steps"

    def run(self, method: str, opts: dict):
        from ..sampling.sampler import Sampler

        opts = dict(opts)
        if self.guidance is not None:
            opts.setdefault("guidance", self.guidance)
        if "plan" in opts:
            opts.pop("steps", None)  # the plan's own
        s = Sampler(self.net, self.schedule, method=method, compile=False, progress=False, **opts)
        return s.run(seeds=self.seeds, labels=self.labels, max_batch=min(self.n, 512))

    def error(self, method: str, opts: dict):
        """(mean, std) per-sample RMSE of the chain's output to the converged solution; None for a stochastic chain."""
        if not deterministic(method, opts):
            return None
        return _rmse(self.run(method, opts), self.x)


def certify(rows: list) -> list:
    """For each method in the table, the smallest number of model evaluations whose FD is within 2
    bootstrap σ of the DDPM 1000-step row's (σ of the difference: both rows' spreads combined), or above
    it by no more than that (a lower FD certifies too); one line each, in the table's own numbers."""
    ref = next((r for r in rows if r["method"] == "ddpm" and r.get("steps") == 1000), None)
    if ref is None:
        return ["- certify: no DDPM 1000-step row in this table"]
    lines, families = [], {}
    for r in rows:
        if r["method"] in ("real",) or r is ref:
            continue
        families.setdefault(r["label"].rsplit(" ", 1)[0], []).append(r)
    for name, group in families.items():
        group.sort(key=lambda r: r["evaluations"])
        hit = next((r for r in group if r["fd"] - ref["fd"] <= 2 * (r["fd_std"] ** 2 + ref["fd_std"] ** 2) ** 0.5), None)
        if hit is None:
            worst = group[-1]
            gap = (worst["fd"] - ref["fd"]) / (worst["fd_std"] ** 2 + ref["fd_std"] ** 2) ** 0.5
            lines.append(f"- {name}: not within 2σ of DDPM 1000 (FD {ref['fd']:.2f} ± {ref['fd_std']:.2f}) at any budget "
                         f"measured (at {worst['evaluations']} evaluations, {worst['fd']:.2f}: {gap:.1f}σ above)")
        else:
            lines.append(f"- {name}: DDPM-1000 quality at {hit['evaluations']} evaluations (FD {hit['fd']:.2f} ± "
                         f"{hit['fd_std']:.2f} against {ref['fd']:.2f} ± {ref['fd_std']:.2f}, "
                         f"{ref['evaluations'] / hit['evaluations']:.0f}× fewer)")
    return lines


def inception_rows(rows: list) -> list:
    """The rows Inception FID is affordable for (~2.5 min per 1,000 images on this CPU): the real floor,
    the DDPM 1000-step row, and the lowest-FD row at the largest budget of at most 20 evaluations."""
    pick = [r for r in rows if r["method"] == "real" or (r["method"] == "ddpm" and r.get("steps") == 1000)]
    small = [r for r in rows if r["method"] != "real" and 0 < r["evaluations"] <= 20]
    if small:
        top = max(r["evaluations"] for r in small)
        pick.append(min((r for r in small if r["evaluations"] == top), key=lambda r: r["fd"]))
    return pick


def extension(folder: Path, n: int, n_inc: int) -> Path:
    """Where a shared row's seeds n .. n_inc-1 live: a folder beside its own (seeds 0 .. n-1), since a
    generate folder keeps the seeds it was started with."""
    return folder.parent / f"{folder.name}-seeds-{n}-{n_inc - 1}"


def add_inception(rows: list, data: str, n_inc: int, *, model: str = None, configs=(), out: Path = None, shared=None,
                  batch: int = 1000, on_row=None, progress: bool = True) -> None:
    """Inception FID (and KID) beside the shipped network's FD on inception_rows(rows), in place, each
    on its own n_inc samples: FID in the Inception's 2,048 features needs more than the tables' 2,000.
    The floor: the first n_inc training images. A row in `shared` (the DDPM 1000-step row, hours on a
    CPU): its shards (seeds 0 .. n-1) and seeds n .. n_inc-1 beside them (extension(); shards of 250,
    resumable in sittings, reused by every later table). Any other row: drawn again at seeds
    0 .. n_inc-1 into out/inception/ (its first n images are the row's own). configs: the table's
    (label, method, options), by which a row is drawn again; on_row(rows) after each row."""
    from .. import metrics
    from ..io.data import labelled
    from ..io.images import to_uint8
    from ..sampling.generate import generate, shard_images

    how = {label: (method, opts) for label, method, opts in configs}
    for r in inception_rows(rows):
        if r.get("inception_n") == n_inc:
            continue
        t0 = time.perf_counter()
        if r["method"] == "real":
            images = [to_uint8(labelled(data, "train")[0][:n_inc])]
        else:
            method, opts = how[r["label"]]
            gen = {k: v for k, v in opts.items() if not ("plan" in opts and k == "steps")}  # a plan sets its own steps
            own = Path(r["folder"])
            if shared is not None and own.parent == Path(shared):
                more = extension(own, r["n"], n_inc)
                parts = [(own, json.loads((own / "manifest.json").read_text())),
                         (more, generate(model, seeds=f"{r['n']}-{n_inc - 1}", out=more, method=method, shard=250,
                                         batch=min(batch, 250), progress=False, **gen))]
            else:
                folder = out / "inception" / slug(r["label"])
                parts = [(folder, generate(model, n=n_inc, out=folder, method=method, shard=n_inc,
                                           batch=min(batch, n_inc), progress=False, **gen))]
            images = (shard_images(f, s, "npz") for f, m in parts for s in m["shards"])
        rep = metrics.evaluate(images, data, kid_subsets=50, features="inception", what=("fd", "kid"))
        r.update(inception_fid=rep["fd"], inception_kid=rep["kid"], inception_n=n_inc,
                 inception_network=rep["feature_network"])
        if on_row is not None:
            on_row(rows)
        if progress:
            sys.stderr.write(f"{r['label']:<26} Inception FID {r['inception_fid']:8.3f} ({n_inc} samples, "
                             f"{time.perf_counter() - t0:.0f} s)\n")


def real_row(data: str, n: int, labels: bool = False) -> dict:
    """The floor: n real training images against the same held-out split. What a perfect
    sampler would score with n samples (FD is biased upwards at small n; KID is not). labels:
    with their true classes (the feature network's class accuracy on these real images)."""
    from .. import metrics
    from ..io.data import labelled
    from ..io.images import to_uint8

    x, y = labelled(data, "train")
    images = to_uint8(x[:n])
    rep = metrics.evaluate(images, data, kid_subsets=50, labels=y[:n] if labels else None)
    return dict(label="real training images (the floor)", method="real", steps=0, evaluations=0, n=n, generate_seconds=0.0,
                **{k: rep[k] for k in REPORTED}, **({k: rep[k] for k in CLASS_REPORTED} if labels else {}),
                fd_std=fd_spread([images], data), feature_network=rep["feature_network"],
                feature_network_accuracy=rep["feature_network_accuracy"])


def sampling_seconds(folder: Path, manifest: dict):
    """What a row's samples cost to make: the sum of its shards' own wall times (kept in each sidecar,
    so a row made in sittings, or reused from benchmarks/rows, says its whole cost); for shards written
    before sidecars kept it, the generate-seconds.json a bench run wrote beside them; else None (made
    elsewhere, not recorded: never the seconds this run spent reading them)."""
    shards = manifest["shards"]
    if shards and all("seconds" in s for s in shards):
        return round(sum(s["seconds"] for s in shards), 1)
    legacy = folder / "generate-seconds.json"
    return round(json.loads(legacy.read_text()), 1) if legacy.exists() else None


def wall_time(row: dict) -> str:
    """A row's wall-time cell: '-' for the real images, 'not recorded' for samples made elsewhere."""
    if row["method"] == "real":
        return "-"
    return "not recorded" if row.get("generate_seconds") is None else f"{row['generate_seconds']:.0f} s"


def measure(model: str, data: str, out: Path, n: int, configs=CONFIGS, batch: int = 1000, progress: bool = True,
            on_row=None, real: bool = False, labels: bool = False, teacher: "Teacher" = None, shared=None) -> list:
    """One row a configuration (after the real-data floor, with real); on_row(rows) after each
    (the CLI rewrites its files, so an interrupted run shows what it measured, and a rerun
    reuses the shards already written, and the wall time of the run that wrote them).
    labels: a class-conditional model, sampled with generate's default labels (seed k: class
    k mod N); each row adds class accuracy and the mean per-class FD. teacher: each deterministic
    row adds its per-sample RMSE to the converged ODE solution (Teacher). shared: the folder the
    DDPM 1000-step row's shards live in, for every table of this model (SHARED_ROWS/MODEL)."""
    from .. import metrics
    from ..io.samples import sample_labels
    from ..sampling.generate import generate, shard_images

    rows = [real_row(data, n, labels)] if real else []
    for label, method, opts in configs:
        to_match = method == "ddpm" and opts.get("steps") == 1000  # the DDPM-1000 row: kept for every table of the model
        folder = (shared if shared is not None and to_match else out / "samples") / slug(label)
        # the DDPM 1000-step row takes hours on a CPU: shards of 250 images, so a sitting stopped keeps all but one
        gen = {k: v for k, v in opts.items() if not ("plan" in opts and k == "steps")}  # a plan sets its own steps
        m = generate(model, n=n, out=folder, method=method, shard=min(n, 250) if to_match else n, batch=min(batch, n),
                     progress=False, **gen)
        seconds = sampling_seconds(folder, m)
        rep = metrics.evaluate((shard_images(folder, s, "npz") for s in m["shards"]), data, kid_subsets=50,
                               labels=sample_labels(folder) if labels else None)
        row = dict(label=label, method=method, **opts, evaluations=evaluations(method, opts), n=n,
                   generate_seconds=seconds, **{k: rep[k] for k in REPORTED},
                   **({k: rep[k] for k in CLASS_REPORTED} if labels else {}),
                   fd_std=fd_spread((shard_images(folder, s, "npz") for s in m["shards"]), data),
                   feature_network=rep["feature_network"])
        row["folder"] = str(folder)
        if teacher is not None:
            err = teacher.error(method, opts)
            row.update(teacher_rmse=None if err is None else err[0], teacher_rmse_std=None if err is None else err[1])
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        if progress:
            acc = f"  acc {row['class_accuracy']:.3f}" if labels else ""
            sys.stderr.write(f"{label:<26} FD {row['fd']:8.3f} ± {row['fd_std']:.2f}  KID {row['kid']:.4f}  "
                             f"P {row['precision']:.2f}  R {row['recall']:.2f}{acc}  {wall_time(row)}\n")
    return rows


def fid_header(rows: list) -> str:
    """The Inception FID column's header (its own sample count, not the table's), '' without one."""
    if not any("inception_fid" in r for r in rows):
        return ""
    ns = sorted({r["inception_n"] for r in rows if r.get("inception_n")})
    return f"Inception FID ↓ ({', '.join(f'{n:,}' for n in ns)} samples) | " if ns else "Inception FID ↓ | "


def table(rows: list, data: str) -> str:
    fid = any("inception_fid" in r for r in rows)  # the column only when some row has it (--inception)
    lines = [f"| sampler ({data}, {rows[0]['n']} samples) | model evaluations | FD ↓ | KID ↓ | precision ↑ | recall ↑ | "
             + fid_header(rows) + "wall time (this CPU) |", "|---|---|---|---|---|---|---|" + ("---|" if fid else "")]
    for r in rows:
        wall = wall_time(r)
        inc = (("-" if r.get("inception_fid") is None else f"{r['inception_fid']:.2f}") + " | ") if fid else ""
        lines.append(f"| {r['label']} | {r['evaluations'] or '-'} | {r['fd']:.2f} | {r['kid']:.3f} ± {r['kid_std']:.3f} | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} | {inc}{wall} |")
    return "\n".join(lines) + "\n"


def _figure():
    """(pyplot, figure, axes) on the Agg backend, or None without matplotlib (then no plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return (plt, *plt.subplots(figsize=(6.5, 4.2)))


def _finish(plt, fig, ax, path: Path) -> str:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot(rows: list, path: Path, data: str):
    if (made := _figure()) is None:
        return None
    plt, fig, ax = made
    for r in rows:
        if r["method"] == "real":
            ax.axhline(r["fd"], color="grey", linestyle="--", linewidth=1, label=f"real training images (n = {r['n']})")
    rows = [r for r in rows if r["method"] != "real"]
    names = {"ddpm": "DDPM (σ²=β; respaced)", "ddim": "DDIM η=0", "dpm++2m": "DPM-Solver++(2M)"}
    for method, label in names.items():
        pts = sorted((r["evaluations"], r["fd"]) for r in rows if r["method"] == method and r.get("eta", 0) == 0
                     and r.get("variance", "large") == "large")
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    for r in rows:
        if r["method"] == "sde-dpm++2m" or r.get("eta") or r.get("variance") == "small":
            ax.plot([r["evaluations"]], [r["fd"]], marker="s", linestyle="none", label=r["label"])
    ax.set(xscale="log", yscale="log", xlabel="model evaluations (sampling steps)", ylabel="Fréchet distance (feature net)",
           title=f"{data}: quality against model evaluations")
    ticks = sorted({r["evaluations"] for r in rows})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    return _finish(plt, fig, ax, path)


def solver_table(rows: list, data: str, model: str, teacher=None) -> str:
    """The solvers at each budget: FD ± bootstrap σ, the per-sample RMSE to the converged ODE
    solution (deterministic rows; `teacher` a Teacher, said under the table), a closing line per
    budget naming the best row and whether the runner-up is separated from it (FDs more than 2σ
    apart), and the certify line when the table has a DDPM 1000-step row."""
    real = next(r for r in rows if r["method"] == "real")
    has_fid = any("inception_fid" in r for r in rows)  # the column only when some row has it (--inception)
    lines = [f"| sampler ({model}, {real['n']} samples) | steps | model evaluations | FD ↓ (± bootstrap σ) | KID ↓ | precision ↑ | "
             f"recall ↑ | RMSE to the ODE ↓ | {fid_header(rows)}wall time (this CPU) |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if has_fid else "")]
    for r in rows:
        wall = wall_time(r)
        ode = "-" if r.get("teacher_rmse") is None else f"{r['teacher_rmse']:.4f}"
        fid = ("-" if r.get("inception_fid") is None else f"{r['inception_fid']:.2f}") + " | " if has_fid else ""
        lines.append(f"| {r['label']} | {r.get('steps') or '-'} | {r['evaluations'] or '-'} | {r['fd']:.2f} ± {r['fd_std']:.2f} | "
                     f"{r['kid']:.3f} ± {r['kid_std']:.3f} | {r['precision']:.2f} | {r['recall']:.2f} | {ode} | {fid}{wall} |")
    if teacher is not None:
        lines += ["", f"RMSE to the ODE: each deterministic chain's output against the converged solution from the same "
                      f"priors (seeds 0..{teacher.n - 1}; {teacher.label}, whose own error is at most its distance to half "
                      f"as many steps, {teacher.self_rmse:.4f}), per sample in [-1, 1], averaged: a solver's error alone, "
                      f"whatever the model's quality."]
    lines.append("")
    budgets = [r for r in rows if r["method"] != "real" and not (r["method"] == "ddpm" and r.get("steps") == 1000)]
    for n in sorted({r["steps"] for r in budgets}):
        at = sorted((r for r in budgets if r["steps"] == n), key=lambda r: r["fd"])
        if len(at) < 2:
            continue
        best, second = at[0], at[1]
        gap, sigma = second["fd"] - best["fd"], (best["fd_std"] ** 2 + second["fd_std"] ** 2) ** 0.5
        lines.append(f"- {n} steps: best {best['label']} (FD {best['fd']:.2f} ± {best['fd_std']:.2f}); next "
                     f"{second['label']} ({second['fd']:.2f} ± {second['fd_std']:.2f}), "
                     + (f"{gap / sigma:.1f}σ behind: separated" if gap > 2 * sigma else f"within {gap / sigma:.1f}σ: not separated"))
    if any(r["method"] == "ddpm" and r.get("steps") == 1000 for r in rows):
        lines += ["", "The certify line (the smallest budget whose FD is within 2 bootstrap σ of DDPM 1000's, or below it):",
                  *certify(rows)]
    return "\n".join(lines) + "\n"


def guided_table(rows: list, data: str) -> str:
    """The guidance sweep as markdown: FD with its bootstrap spread, class accuracy, and a
    closing line stating in the table's own numbers where FD is best and what guidance did to
    class accuracy (against the feature network's accuracy on real test images)."""
    real = next(r for r in rows if r["method"] == "real")
    n = real["n"]
    lines = [f"| sampler ({data}, {n} samples, labels k mod 10) | model evaluations | FD ↓ (± bootstrap σ) | KID ↓ | "
             f"precision ↑ | recall ↑ | class accuracy ↑ | per-class FD ↓ | wall time (this CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = wall_time(r)
        lines.append(f"| {r['label']} | {r['evaluations'] or '-'} | {r['fd']:.2f} ± {r['fd_std']:.2f} | {r['kid']:.3f} ± "
                     f"{r['kid_std']:.3f} | {r['precision']:.2f} | {r['recall']:.2f} | {r['class_accuracy']:.3f} | "
                     f"{'-' if r['fd_per_class_mean'] is None else format(r['fd_per_class_mean'], '.2f')} | {wall} |")
    sampled = [r for r in rows if r["method"] != "real"]
    if sampled:
        best = min(sampled, key=lambda r: r["fd"])
        top = max(sampled, key=lambda r: r["class_accuracy"])
        target = 0.9 * real["feature_network_accuracy"]
        at_best = best["class_accuracy"]
        lines += ["", f"FD is lowest at {best['label']} ({best['fd']:.2f} ± {best['fd_std']:.2f}); class accuracy there "
                  f"{at_best:.3f}, the highest {top['class_accuracy']:.3f} ({top['label']}). The feature network recovers "
                  f"{real['feature_network_accuracy']:.4f} of real test images' classes: the target, 0.9× that, is "
                  f"{target:.3f}, {'reached' if at_best >= target else 'not reached'} at the best-FD row and "
                  f"{'reached' if top['class_accuracy'] >= target else 'not reached'} at the most accurate one."]
    return "\n".join(lines) + "\n"


def guided_plot(rows: list, path: Path, data: str):
    """FD against class accuracy (the fidelity/diversity trade of guidance): one line per
    method through w = 0 .. 5, the interval row as its own marker, the real images' point."""
    if (made := _figure()) is None:
        return None
    plt, fig, ax = made
    for r in rows:
        if r["method"] == "real":
            ax.plot([r["class_accuracy"]], [r["fd"]], marker="*", markersize=11, color="grey", linestyle="none",
                    label=f"real training images (n = {r['n']})")
    for method, label in (("dpm++2m", "DPM-Solver++(2M) 20"), ("sde-dpm++2m", "SDE-DPM-Solver++(2M) 20")):
        pts = [r for r in rows if r["method"] == method and not r.get("guidance_interval")]
        if pts:
            pts.sort(key=lambda r: r["guidance"])
            ax.errorbar([r["class_accuracy"] for r in pts], [r["fd"] for r in pts], yerr=[r["fd_std"] for r in pts],
                        marker="o", capsize=2, label=label)
            for r in pts:
                ax.annotate(f"w={r['guidance']:g}", (r["class_accuracy"], r["fd"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
    for r in rows:
        if r.get("guidance_interval"):
            ax.errorbar([r["class_accuracy"]], [r["fd"]], yerr=[r["fd_std"]], marker="s", linestyle="none", capsize=2,
                        label=r["label"])
    ax.set(yscale="log", xlabel="class accuracy (feature net recovers the asked-for class)",
           ylabel="Fréchet distance (feature net)", title=f"{data}: classifier-free guidance, FD against class accuracy")
    return _finish(plt, fig, ax, path)


def tuned_configs(model: str, out: Path, progress: bool = True, guidance=None) -> list:
    """(label, method, options) rows of the --tuned table: each TUNED_METHODS entry at each budget, untuned,
    tuned, and for LEARNED_METHODS tuned with learned coefficients; the plans made by fastddpm.tune (into
    OUT/plans, reused when there; the teacher's trajectories cached in OUT/tune-cache, shared by every plan).
    guidance: a conditional model's w (the plans are searched at it)."""
    from ..core import tuned
    from ..io import checkpoint as ckpt
    from ..tune import tune

    configs = []
    g = {} if guidance is None else {"guidance": guidance}
    for name, method, o in TUNED_METHODS:
        for n in TUNED_BUDGETS:
            configs.append((f"{name} {n}", method, dict(steps=n, **o, **g)))
            for learn in ((0, LEARN_ITERS) if name in LEARNED_METHODS else (0,)):
                path = out / "plans" / f"{slug(name)}-{n}{'-learned' if learn else ''}.json"
                try:
                    tuned.read(path)
                except ValueError:
                    plan = tune(model, method, n, options=dict(o), guidance=guidance, learn_iters=learn, lr=LEARN_LR,
                                cache=out / "tune-cache", progress=progress,
                                command=f"fastddpm.bench --quality --tuned ({name}, {n} steps{', learned' if learn else ''})")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ckpt.write_atomic(path, (json.dumps(plan, indent=1) + "\n").encode())
                configs.append((f"{name} tuned{'+learned' if learn else ''} {n}", method, dict(steps=n, plan=str(path))))
    return configs


def plan_configs(plans: list, model: str) -> list:
    """(label, method, options) rows for plan files of the user's (bench --quality --plan FILE): each plan's
    method on its default grid at the same budget, then the plan; a plan for another model is refused by name."""
    from ..core import tuned
    from ..models.loading import load_model, plan_file

    _, schedule, info = load_model(model)
    configs = []
    for p in plans:
        p = plan_file(p, model)  # a file, or a plan shipped with the model by name
        d = tuned.read(p)
        tuned.check_for(d, schedule, d["prediction"], model_hash=info["hash"])
        opts = tuned.method_options(d)
        n = len(d["timesteps"])
        base = {k: v for k, v in opts.items() if k not in ("method", "timesteps", "scales")}
        name = Path(p).stem
        configs += [(f"{d['method']['name']} {n}", d["method"]["name"], dict(steps=n, **base)),
                    (f"{name} (plan) {n}", d["method"]["name"], dict(steps=n, plan=str(p)))]
    return configs


def main(data: str, out=None, train: bool = False, guidance: bool = False, solvers: bool = False, inception=None,
         tuned: bool = False, plans: list = None) -> dict:
    """inception: the Inception rows' sample count (True: INCEPTION_SAMPLES; None or False: no Inception FID)."""
    if data not in SAMPLES:
        raise ValueError(f"data: --quality needs --data {' or '.join(SAMPLES)}, got {data!r}")
    if guidance and data not in GUIDED_MODEL:
        raise ValueError(f"data: --quality --guidance needs a shipped class-conditional model: --data "
                         f"{' or '.join(GUIDED_MODEL)}, got {data!r}")
    if guidance and train:
        raise ValueError(f"train: the guidance sweep samples the shipped {GUIDED_MODEL[data]!r} (its command is in "
                         f"fastddpm/models/weights/{GUIDED_MODEL[data]}.json); --train is for the digits table")
    from ..io.data import labelled

    # the real images every table is measured against, read first: a missing dataset is said now, not after the
    # teacher's or the rows' minutes of sampling (the Fashion-MNIST solvers table once failed after 14)
    held_out = labelled(data, "test")[0].shape[0]
    n = SOLVER_SAMPLES if solvers else GUIDED_SAMPLES if guidance else SAMPLES[data]  # samples a row
    if inception is True:
        inception = INCEPTION_SAMPLES
    if inception not in (None, False):  # FID needs more images than the Inception's 2,048 features on both sides
        from ..metrics.inception import DIM

        if not isinstance(inception, int) or isinstance(inception, bool):
            raise TypeError(f"inception: expected the Inception rows' sample count (an int), got {inception!r}")
        if held_out <= DIM:
            raise ValueError(f"inception: {data}'s held-out split has {held_out} images; FID in the Inception's {DIM} "
                             f"features needs more than {DIM} on each side (--inception is for fashion-mnist)")
        train_n = labelled(data, "train")[0].shape[0]
        if not max(n, DIM + 1) <= inception <= train_n:  # a 2,000-sample row once found its singular covariance after 89 min
            raise ValueError(f"inception: expected a sample count in [{max(n, DIM + 1)}, {train_n}]: more than the "
                             f"Inception's {DIM} features, at least the table's {n} a row (the Inception rows extend "
                             f"its seeds), at most the {train_n} training images of the floor; got {inception}")
    if (tuned or plans) and not solvers:
        raise ValueError(f"{'tuned' if tuned else 'plan'}: tuned plans are measured in the --solvers table (teacher RMSE, "
                         f"certify line): pass --solvers")
    if tuned and plans:
        raise ValueError("plan: --tuned makes its own plans; measure your plan files without it")
    if plans and not train:  # read and checked against the model before any sampling
        plan_configs(plans, GUIDED_MODEL[data] if guidance else model_for(data, Path("."), False))
    out = Path(out or f"bench-results/quality-{data}{'-solvers' if solvers else ''}{'-guidance' if guidance else ''}"
                      f"{'-tuned' if tuned else ''}{'-plans' if plans else ''}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher = shared = None
    if solvers:
        model = GUIDED_MODEL[data] if guidance else model_for(data, out, train)
        # the row to match first (its shards shared by this model's tables), then the solvers at each budget
        configs = [(label + (f", w={SOLVER_GUIDANCE:g}" if guidance else ""), method,
                    dict(opts, **({"guidance": SOLVER_GUIDANCE} if guidance else {}))) for label, method, opts in
                   [DDPM_1000, *SOLVER_CONFIGS] if not guidance or label == DDPM_1000[0] or label.rsplit(" ", 1)[0] in GUIDED_SOLVERS]
        shared = SHARED_ROWS / slug(model)
        teacher = Teacher(model, out, guidance=SOLVER_GUIDANCE if guidance else None)
        ddpm = configs[0]  # the DDPM-1000 row (at the guided model's w)
        if tuned:
            configs = [ddpm, *tuned_configs(model, out, guidance=SOLVER_GUIDANCE if guidance else None)]
        elif plans:
            configs = [ddpm, *plan_configs(plans, model)]
    elif guidance:
        model, configs = GUIDED_MODEL[data], GUIDED_CONFIGS
    else:
        model = model_for(data, out, train)
        configs = [c for c in CONFIGS if c[0] not in SKIP.get(data, ())]

    def write(rows):
        if solvers:
            md, png = solver_table(rows, data, model, teacher), None
        else:
            md = guided_table(rows, data) if guidance else table(rows, data)
            png = (guided_plot if guidance else plot)(rows, out / "quality.png", data)
        (out / "quality.md").write_text(md)
        rep = dict(schema="fastddpm.quality/1", data=data, model=model, samples=n, guidance=guidance, solvers=solvers,
                   tuned=tuned, rows=rows,
                   **({"teacher": teacher.label, "teacher_samples": teacher.n, "teacher_self_rmse": teacher.self_rmse}
                      if teacher is not None else {}),
                   complete=sum(r["method"] != "real" for r in rows) == len(configs), seconds=round(time.perf_counter() - t0, 1))
        (out / "quality.json").write_text(json.dumps(rep, indent=1) + "\n")
        return rep, md, png

    rows = measure(model, data, out, n, configs, on_row=write, real=True, labels=guidance and not solvers, teacher=teacher,
                   shared=shared)
    if inception:  # the field's FID beside the feature network's FD, where affordable (inception_rows)
        add_inception(rows, data, inception, model=model, configs=configs, out=out, shared=shared, on_row=write)
    rep, md, png = write(rows)
    sys.stdout.write(md + f"\nwrote {out / 'quality.json'}, {out / 'quality.md'}" + (f", {png}" if png else "") + "\n")
    return rep
