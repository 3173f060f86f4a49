"""Quality per model evaluation: what each sampler buys, measured on real data.

    python -m fastddpm.bench --quality --data digits                # the shipped digits model
    python -m fastddpm.bench --quality --data digits --train        # retrain it first (the README's command)
    python -m fastddpm.bench --quality --data fashion-mnist         # the shipped fashion-mnist-small model

For every sampler configuration in CONFIGS: generate a fixed seed range through
fastddpm.generate, measure FD, KID, precision and recall against the held-out split with
fastddpm.metrics, time the generation on this machine. Writes OUT/quality.json, a markdown
table OUT/quality.md and a plot OUT/quality.png (FD against model evaluations, log scale,
one line per method). The figures compare samplers with each other in one feature
network's features; they are not Inception FID.
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
DIGITS_RUN = ["--data", "digits"]  # the README's training command, into OUT/model


def model_for(data: str, out: Path, train: bool = False) -> str:
    """The model a table measures: the shipped one (digits, fashion-mnist-small); with train,
    digits is trained again by the README's command into OUT/model (a finished run there is
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


def real_row(data: str, n: int) -> dict:
    """The floor: n real training images against the same held-out split. What a perfect
    sampler would score with n samples (FD is biased upwards at small n; KID is not)."""
    from .. import metrics
    from ..io.data import labelled
    from ..io.images import to_uint8

    images = to_uint8(labelled(data, "train")[0][:n])
    rep = metrics.evaluate(images, data, kid_subsets=50)
    return dict(label="real training images (the floor)", method="real", steps=0, evaluations=0, n=n, generate_seconds=0.0,
                **{k: rep[k] for k in REPORTED},
                feature_network=rep["feature_network"])


def measure(model: str, data: str, out: Path, n: int, configs=CONFIGS, batch: int = 1000, progress: bool = True,
            on_row=None, real: bool = False) -> list:
    """One row a configuration (after the real-data floor, with real); on_row(rows) after each
    (the CLI rewrites its files, so an interrupted run shows what it measured, and a rerun
    reuses the shards already written, and the wall time of the run that wrote them)."""
    from .. import metrics
    from ..sampling.generate import generate, shard_images

    rows = [real_row(data, n)] if real else []
    for label, method, opts in configs:
        folder = out / "samples" / slug(label)
        timing = folder / "generate-seconds.json"  # the wall time of the run that wrote the shards
        manifest = folder / "manifest.json"
        was_complete = manifest.exists() and json.loads(manifest.read_text()).get("complete", False)
        t0 = time.perf_counter()
        m = generate(model, n=n, out=folder, method=method, shard=n, batch=min(batch, n), progress=False, **opts)
        if not (was_complete and timing.exists()):
            timing.write_text(json.dumps(round(time.perf_counter() - t0, 1)) + "\n")
        seconds = json.loads(timing.read_text())
        rep = metrics.evaluate((shard_images(folder, s, "npz") for s in m["shards"]), data, kid_subsets=50)
        row = dict(label=label, method=method, **opts, evaluations=opts["steps"], n=n, generate_seconds=round(seconds, 1),
                   **{k: rep[k] for k in REPORTED},
                   feature_network=rep["feature_network"])
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        if progress:
            sys.stderr.write(f"{label:<26} FD {row['fd']:8.3f}  KID {row['kid']:.4f}  P {row['precision']:.2f}  "
                             f"R {row['recall']:.2f}  {seconds:6.1f} s\n")
    return rows


def table(rows: list, data: str) -> str:
    lines = [f"| sampler ({data}, {rows[0]['n']} samples) | model evaluations | FD ↓ | KID ↓ | precision ↑ | recall ↑ | wall time (this CPU) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = "-" if r["method"] == "real" else f"{r['generate_seconds']:.0f} s"
        lines.append(f"| {r['label']} | {r['evaluations'] or '-'} | {r['fd']:.2f} | {r['kid']:.3f} ± {r['kid_std']:.3f} | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} | {wall} |")
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path, data: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
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
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def main(data: str, out=None, train: bool = False) -> dict:
    if data not in SAMPLES:
        raise ValueError(f"data: --quality needs --data {' or '.join(SAMPLES)}, got {data!r}")
    out = Path(out or f"bench-results/quality-{data}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = model_for(data, out, train)
    configs = [c for c in CONFIGS if c[0] not in SKIP.get(data, ())]

    def write(rows):
        md = table(rows, data)
        (out / "quality.md").write_text(md)
        png = plot(rows, out / "quality.png", data)
        rep = dict(schema="fastddpm.quality/1", data=data, model=model, samples=SAMPLES[data], rows=rows,
                   complete=sum(r["method"] != "real" for r in rows) == len(configs), seconds=round(time.perf_counter() - t0, 1))
        (out / "quality.json").write_text(json.dumps(rep, indent=1) + "\n")
        return rep, md, png

    rows = measure(model, data, out, SAMPLES[data], configs, on_row=write, real=True)
    rep, md, png = write(rows)
    sys.stdout.write(md + f"\nwrote {out / 'quality.json'}, {out / 'quality.md'}" + (f", {png}" if png else "") + "\n")
    return rep
