"""python -m fastddpm.generate: many images, sharded, resumable, on one process or many.

    python -m fastddpm.generate --model runs/fm --n 50000 --out samples/fm --method ddim --steps 50
    torchrun --nproc_per_node 8 -m fastddpm.generate --model runs/fm --n 50000 --out samples/fm ...

This module is the command line; `generate(...)` below is the same work as a Python function
(fastddpm.sampling.generate, where its contract is written).
"""

import argparse

from . import cli
from .core.plan import METHODS, SPACINGS
from .io.samples import FORMATS
from .sampling.generate import generate

__all__ = ["generate", "main"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a training run's folder or checkpoint, a diffusers save_pretrained folder, "
                                                   "a shipped model's name, or an OpenAI ADM .pt (see --model-flags)")
    ap.add_argument("--model-flags", default=None, metavar="FLAGS",
                    help="an OpenAI guided-diffusion / improved-diffusion .pt's MODEL_FLAGS and DIFFUSION_FLAGS, as their "
                         "README writes them (or a published checkpoint's name); default: from the file's name")
    ap.add_argument("--n", type=int, default=None, help="how many images (default: as many as --seeds)")
    ap.add_argument("--out", required=True, help="the output folder (shards, sidecars, manifest.json)")
    ap.add_argument("--seeds", default=None, help="seeds: 'a-b' (inclusive), 'a,b,c' or a mix (default 0 .. n-1); "
                                                  "negative ones too: --seeds -5-4")
    ap.add_argument("--method", default="ddpm", choices=METHODS, help="sampler (default ddpm)")
    ap.add_argument("--steps", type=int, default=None, help="model evaluations (default: T for ddpm, 50 ddim, 20 the multistep solvers)")
    ap.add_argument("--spacing", default=None, choices=SPACINGS, help="timestep spacing (default: the model's, else trailing)")
    ap.add_argument("--eta", type=float, default=0.0, help="ddim's η (default 0)")
    ap.add_argument("--order", type=int, default=None, help="unipc 1-3 (default 2), ipndm 1-4 (default 2)")
    ap.add_argument("--solver-type", default=None, choices=("bh1", "bh2"), help="unipc's B(h) (default: the model's, else bh2)")
    ap.add_argument("--corrector", action=argparse.BooleanOptionalAction, default=None, help="unipc's corrector (default on)")
    ap.add_argument("--disable-corrector", default=None, metavar="I,J,...",
                    help="unipc: steps whose successor is left uncorrected (diffusers' disable_corrector)")
    ap.add_argument("--lower-order-final", action=argparse.BooleanOptionalAction, default=None,
                    help="dpm++3m, unipc: lower orders in the last steps (default: the model's, else on)")
    ap.add_argument("--variance", default=None, choices=("large", "small", "none", "learned"),
                    help="ddpm's σ (default: the model's, else large; a learned-Σ model's own: learned)")
    ap.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                    help="clamp x̂_0 to [-1, 1] (ddpm, ddim; default: the model's, else off)")
    ap.add_argument("--prediction", default=None, choices=("epsilon", "v", "sample", "v_prediction"),
                    help="what the model predicts (default: the model's, read by load_model, else epsilon)")
    ap.add_argument("--labels", default=None, help="a class-conditional model's classes: one int for every image, or a "
                                                   "comma list, one an image (default: seed mod the number of classes)")
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight w (0 unconditional, 1 plain)")
    ap.add_argument("--guidance-interval", default=None, metavar="LO,HI", help="guide only for LO < t <= HI")
    ap.add_argument("--shard", type=int, default=1000, help="images a shard (default 1000)")
    ap.add_argument("--format", default="npz", choices=FORMATS, help="uint8 NHWC .npz shards, or a folder of PNGs a shard")
    ap.add_argument("--batch", type=int, default=1024, help="micro-batch (default 1024); the same --batch gives the same bytes")
    ap.add_argument("--device", default=None, help="default: cuda (the local rank's) if there is one, else cpu")
    ap.add_argument("--plan", default=None, metavar="FILE", help="a tuned plan (python -m fastddpm.tune), or the name of "
                    "one shipped with a shipped model (fastddpm/models/weights/plans/MODEL/NAME.json): its method, options, "
                    "timesteps (and learned coefficients, guidance), for this model only (the manifest records its hash)")
    ap.add_argument("--eval", default=None, metavar="DATA", help="measure the shards' quality at the end against DATA: "
                    "digits / fashion-mnist (their test split), or a path to your real images (a folder, an .npz/.npy, "
                    "CIFAR batches: their train split), opened and checked before any sampling")
    ap.add_argument("--eval-features", default="shipped", choices=("shipped", "inception"),
                    help="--eval in DATA's shipped network (default) or the FID Inception (found offline)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    args = ap.parse_args(_negative_values(argv, "--seeds"))
    kw = {k: v for k, v in vars(args).items() if k not in ("model", "debug")}
    if args.guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in args.guidance_interval.split(","))
        except ValueError:
            ap.error(f"--guidance-interval: expected LO,HI (two numbers), got {args.guidance_interval!r}")
        kw["guidance_interval"] = (lo, hi)
    if args.disable_corrector is not None:
        try:
            kw["disable_corrector"] = tuple(int(v) for v in args.disable_corrector.split(",") if v.strip())
        except ValueError:
            ap.error(f"--disable-corrector: expected step indices I,J,... (ints), got {args.disable_corrector!r}")
    return generate(args.model, **kw)


def _negative_values(argv, flag: str) -> list:
    """`--seeds -5-4` as `--seeds=-5-4`: argparse takes a value that starts with '-' for an option."""
    argv = list(argv) if argv is not None else None
    if argv is None:
        import sys

        argv = sys.argv[1:]
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{flag}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


if __name__ == "__main__":
    cli.run("python -m fastddpm.generate", main)
