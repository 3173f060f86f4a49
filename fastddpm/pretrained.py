"""python -m fastddpm.pretrained export RUN NAME: ship a training run's EMA weights.

The models to sample from (a training run, a checkpoint, a diffusers folder, a shipped name)
are loaded by `fastddpm.pretrained.load_model`, kept in fastddpm.models.loading.
"""

import argparse
import sys

from .models.loading import export, load_model, shipped

__all__ = ["export", "load_model", "main", "shipped"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastddpm.pretrained", description="ship a training run's EMA weights")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="RUN NAME: write fastddpm/models/weights/NAME.safetensors and NAME.json")
    e.add_argument("run", help="a training run's folder (its newest checkpoint that verifies)")
    e.add_argument("name", help="the shipped model's name")
    e.add_argument("--command", default="", help="the training command, recorded beside the weights")
    args = ap.parse_args(argv)
    path = export(args.run, args.name, args.command)
    sys.stdout.write(f"wrote {path} and {path.with_suffix('.json')}\n")
    return path


if __name__ == "__main__":
    main()
