"""python -m fastddpm.eval SAMPLES --data fashion-mnist|digits: sample quality, offline.

SAMPLES is a folder of PNGs, an .npz of uint8 images (array "images", or its only array),
or a folder written by `python -m fastddpm.generate` (its shards, in manifest order). The
images are streamed through the data set's feature network (fastddpm.metrics), compared
with the real split (test by default, its features cached), and the report is printed
and written as JSON (default: SAMPLES/eval-<data>-<split>.json, or SAMPLES.eval.json).

The figures are Fréchet distance, KID (mean ± std over subsets), precision, recall, density
and coverage in that network's features: comparable between samplers and models on the
same data and network (its hash is in the report), not with Inception FID. A generate folder
of a class-conditional model adds class accuracy (the network's classifier recovering the
asked-for labels) and the mean per-class Fréchet distance.
"""

import argparse
import json
from pathlib import Path

from . import cli, metrics
from .io import checkpoint as ckpt
from .io.samples import iter_samples, sample_labels


def default_json(samples: Path, data: str, split: str) -> Path:
    return samples / f"eval-{data}-{split}.json" if samples.is_dir() else samples.with_suffix(samples.suffix + ".eval.json")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.eval", description=__doc__.split("\n")[0])
    ap.add_argument("samples", metavar="SAMPLES", help="a PNG folder, an .npz of uint8 images, or a generate output folder")
    ap.add_argument("--data", required=True, choices=sorted(metrics.features.CONFIGS), help="which data set the samples imitate")
    ap.add_argument("--split", default="test", choices=("test", "train"), help="the real images to compare with (default: test)")
    ap.add_argument("--json", default=None, help="where to write the report (default: beside SAMPLES)")
    ap.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets (default 100)")
    ap.add_argument("--k", type=int, default=5, help="precision/recall: neighbours of the balls (default 5)")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    args = ap.parse_args(argv)
    metrics.check_options(kid_subsets=args.kid_subsets, k=args.k)  # before any image is read
    path = Path(args.json) if args.json else default_json(Path(args.samples), args.data, args.split)
    ckpt.check_can_create(path.parent, "--json")
    if path.is_dir():
        raise ValueError(f"--json: {path} is a folder; expected a file to write")
    report = metrics.evaluate(iter_samples(args.samples), args.data, args.split, kid_subsets=args.kid_subsets, k=args.k,
                              labels=sample_labels(args.samples))
    metrics.print_report(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    cli.run("python -m fastddpm.eval", main)
