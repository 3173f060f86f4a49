"""python -m fastddpm.eval SAMPLES --data fashion-mnist|digits: sample quality, offline.

SAMPLES is a folder of PNGs, an .npz of uint8 images (array "images", or its only array),
or a folder written by `python -m fastddpm.generate` (its shards, in manifest order). The
images are streamed through the data set's feature network (fastddpm.metrics), compared
with the real split (test by default, its features cached), and the report is printed
and written as JSON (default: SAMPLES/eval-<data>-<split>.json, or SAMPLES.eval.json).

The figures are Fréchet distance, KID (mean ± std over subsets), precision, recall, density
and coverage in that network's features: comparable between samplers and models on the
same data and network (its hash is in the report), not with Inception FID.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .images import read_png


def iter_samples(path, batch: int = 1000):
    """uint8 image batches from a PNG folder, an .npz, or a generate output folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAMPLES: {path} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"SAMPLES: expected a folder or an .npz file, got {path.name}")
        yield _npz_images(path)
        return
    manifest = path / "manifest.json"
    if manifest.exists():
        from .generate import read_manifest, shard_images

        m = read_manifest(path)
        for shard in m["shards"]:
            yield torch.from_numpy(shard_images(path, shard, m["config"]["format"]))
        return
    pngs = sorted(p for p in path.rglob("*.png"))
    if not pngs:
        raise ValueError(f"SAMPLES: {path} holds no PNG images, no .npz and no manifest.json")
    for i in range(0, len(pngs), batch):
        imgs = [read_png(p) for p in pngs[i : i + batch]]
        shapes = {tuple(im.shape) for im in imgs}
        if len(shapes) != 1:
            raise ValueError(f"SAMPLES: images of different shapes {sorted(shapes)[:3]} in {path}")
        yield torch.stack(imgs)


def _npz_images(path) -> torch.Tensor:
    try:
        with np.load(path) as f:
            key = "images" if "images" in f.files else (f.files[0] if len(f.files) == 1 else None)
            if key is None:
                raise ValueError(f"SAMPLES: {path} has arrays {f.files}; expected one named 'images'")
            return torch.from_numpy(np.ascontiguousarray(f[key]))
    except (OSError, EOFError, ValueError) as e:
        if str(e).startswith("SAMPLES"):
            raise
        raise ValueError(f"SAMPLES: {path} is not a readable .npz ({type(e).__name__}: {e})") from e


def default_json(samples: Path, data: str, split: str) -> Path:
    return samples / f"eval-{data}-{split}.json" if samples.is_dir() else samples.with_suffix(samples.suffix + ".eval.json")


def print_table(r: dict, out=None) -> None:
    out = out or sys.stdout
    out.write(f"{r['samples']} samples against {r['reference']} real {r['data']} images ({r['split']} split), "
              f"in the features of network {r['feature_network']} (test accuracy {r['feature_network_accuracy']})\n")
    out.write(f"  Fréchet distance  {r['fd']:.4f}\n  KID               {r['kid']:.5f} ± {r['kid_std']:.5f}\n"
              f"  precision         {r['precision']:.3f}\n  recall            {r['recall']:.3f}\n"
              f"  density           {r['density']:.3f}\n  coverage          {r['coverage']:.3f}\n")
    out.write("  (not Inception FID: comparable only with figures in the same feature network)\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.eval", description=__doc__.split("\n")[0])
    ap.add_argument("samples", metavar="SAMPLES", help="a PNG folder, an .npz of uint8 images, or a generate output folder")
    ap.add_argument("--data", required=True, choices=sorted(metrics.features.CONFIGS), help="which data set the samples imitate")
    ap.add_argument("--split", default="test", choices=("test", "train"), help="the real images to compare with (default: test)")
    ap.add_argument("--json", default=None, help="where to write the report (default: beside SAMPLES)")
    ap.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets (default 100)")
    ap.add_argument("--k", type=int, default=5, help="precision/recall: neighbours of the balls (default 5)")
    args = ap.parse_args(argv)
    report = metrics.evaluate(iter_samples(args.samples), args.data, args.split, kid_subsets=args.kid_subsets, k=args.k)
    print_table(report)
    path = Path(args.json) if args.json else default_json(Path(args.samples), args.data, args.split)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
