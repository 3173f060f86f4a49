"""python -m fastddpm.pretrained export RUN NAME | export-diffusers MODEL OUT.

export: ship a training run's EMA weights (fastddpm/models/weights/NAME.*).
export-diffusers: write a diffusers DDPMPipeline folder of any model load_model reads, its
conventions (prediction type, variance, clipping, schedule) in the scheduler's config.

The models to sample from (a training run, a checkpoint, a diffusers folder, a shipped name)
are loaded by `fastddpm.pretrained.load_model`, kept in fastddpm.models.loading.
"""

import argparse
import sys

from . import cli
from .models.loading import SHIPPED, export, export_diffusers, load_model, shipped

__all__ = ["SHIPPED", "export", "export_diffusers", "load_model", "main", "shipped"]  # SHIPPED: the weights' folder


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastddpm.pretrained", description="ship a training run's EMA weights, "
                                 "or export a model as a diffusers DDPMPipeline folder")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="RUN NAME: write fastddpm/models/weights/NAME.safetensors and NAME.json")
    e.add_argument("run", help="a training run's folder (its newest checkpoint that verifies)")
    e.add_argument("name", help="the shipped model's name")
    e.add_argument("--command", default="", help="the training command, recorded beside the weights")
    e.add_argument("--notes", default="", help="recorded beside the weights too: the wall time, the machine, the sittings")
    d = sub.add_parser("export-diffusers", help="MODEL OUT: a DDPMPipeline folder (unet/, scheduler/, model_index.json)")
    d.add_argument("model", help="a run folder, a checkpoint, a shipped model's name or a diffusers folder")
    d.add_argument("out", help="the new folder (must not exist)")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    args = ap.parse_args(argv)
    if args.cmd == "export-diffusers":
        path = export_diffusers(args.model, args.out)
        sys.stdout.write(f"wrote {path} (DDPMPipeline.from_pretrained loads it)\n")
        return path
    path = export(args.run, args.name, args.command, notes=args.notes)
    sys.stdout.write(f"wrote {path} and {path.with_suffix('.json')}\n")
    return path


if __name__ == "__main__":
    cli.run("python -m fastddpm.pretrained", main)
