"""python -m fastddpm.train: train a DDPM on a built-in set or your own images with the fused kernels.

    python -m fastddpm.train --data digits --out runs/digits                 # CPU, minutes (3,000 steps)
    python -m fastddpm.train --data fashion-mnist --out runs/fm              # a GPU
    python -m fastddpm.train --data cifar-10-batches-py --hflip --out runs/cifar   # the DDPM CIFAR-10 U-Net (35.7 M): a GPU
    python -m fastddpm.train --data photos/ --image-size 64 --model ddpm-64 --out runs/photos
    torchrun --nproc_per_node 2 -m fastddpm.train --data digits --out runs/ddp
    python -m fastddpm.train --data digits --out runs/digits --resume        # continue (or extend: --steps)

Checkpoints (the run's newest --keep) go to OUT/checkpoints, EMA sample grids to
OUT/samples-*.png, the loss curve to OUT/curve.json. A resume may change only --steps,
--log-every, --checkpoint-every, --sample-every, --sample-batch and --keep; every other
setting decides the run sample by sample and must stay as it was.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist

from . import cli
from .io import data as datasets
from .io import sources
from .training.trainer import SCHEDULES, TrainConfig, Trainer
from .models.unet import UNet, UNetConfig, forward_flops

MODELS = {  # a U-Net sized for each built-in dataset
    "digits": UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=32, channel_mult=(1, 2),
                         layers_per_block=1, attn_resolutions=(4,), norm_groups=8),
    "fashion-mnist": UNetConfig(in_channels=1, out_channels=1, sample_size=28, base_channels=64, channel_mult=(1, 2, 2),
                                layers_per_block=2, attn_resolutions=(14,), norm_groups=32),
    # 1.1 M parameters: trains on a 2-core CPU in about 1.5 hours (the model that ships)
    "fashion-mnist-small": UNetConfig(in_channels=1, out_channels=1, sample_size=28, base_channels=32, channel_mult=(1, 2, 2),
                                      layers_per_block=1, attn_resolutions=(7,), norm_groups=8),
}
# the architectures papers train at 32 and 64 pixels, channels set from the data
SIZED = {
    # Ho et al. (2020), CIFAR-10: 35,746,307 parameters (diffusers' google/ddpm-cifar10-32); they trained with dropout 0.1
    "ddpm-cifar10": UNetConfig(dropout=0.1),
    # diffusers' train_unconditional.py at --resolution 64 (UNet2DModel's defaults): 113,673,219 parameters
    "ddpm-64": UNetConfig(sample_size=64, base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), layers_per_block=2,
                          attn_resolutions=(4,), norm_eps=1e-5, attention_head_dim=8, downsample_padding=1,
                          flip_sin_to_cos=True, freq_shift=0),
}
MODELS.update(SIZED)
DEFAULTS = {"digits": dict(steps=3000, lr=1e-3, warmup=200, ema_decay=0.999), "fashion-mnist": dict(steps=50_000)}

HELP = {
    "batch_size": "samples a step, per rank", "lr": "AdamW learning rate", "warmup": "linear warm-up, in steps",
    "grad_clip": "gradient-norm clip (0: none)", "ema_decay": "EMA decay, in [0, 1)", "weight_decay": "AdamW weight decay",
    "seed": "the run's seed, in [0, 2**23)", "schedule": "noise schedule", "T": "timesteps of the schedule",
    "fused": "the fused kernels (--no-fused: the eager reference path)", "compile": "torch.compile the forward and loss",
    "steps": "optimizer steps in the whole run (may grow on --resume)", "log_every": "steps between loss read-backs",
    "prediction": "what the model predicts: epsilon, v or sample (x_0)",
    "min_snr_gamma": "min-SNR-γ loss weighting (Hang et al.; 5 is usual; 0: off)",
    "zero_snr": "rescale the schedule to zero terminal SNR (Lin et al.; with --prediction v)",
    "cond_drop": "--conditional: the share of samples trained with the null label (classifier-free guidance)",
    "hflip": "flip each sample left-right with probability 1/2, addressed by (seed, sample) (DDPM's CIFAR-10 augmentation)",
    "checkpoint_every": "steps between checkpoints (0: only at the end)", "sample_every": "steps between EMA sample grids "
    "(0: one at the end)", "sample_batch": "images in a sample grid", "keep": "the run's newest checkpoints kept",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.train", description=__doc__.split("\n")[0],
                                 epilog="Defaults marked 'digits' apply to --data digits; the others are TrainConfig's.")
    ap.add_argument("--data", default="digits", metavar="DATA",
                    help="digits, fashion-mnist, a folder of images (recursive; classes: first-level subfolders), "
                         "a CIFAR-10/100 python-batches folder, or an .npz/.npy of uint8 images (default: digits)")
    ap.add_argument("--image-size", type=int, default=None, metavar="S",
                    help="fit your images to S x S: guided-diffusion's centre crop (BOX halving, BICUBIC resize, "
                         "centre crop; never upsampled) (default: their own size, which must be square and one)")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=None, help="convert your images to grey (1) or RGB (3) "
                    "(default: their own; required when a folder mixes them)")
    ap.add_argument("--workers", type=int, default=None, metavar="N", help="processes decoding a folder too large for memory "
                    "(default: min(8, CPUs); speed only, never the samples)")
    ap.add_argument("--model", choices=sorted(MODELS), default=None,
                    help="U-Net preset (default: the one named like --data; for your own images the one sized like them: "
                         "ddpm-cifar10 at 32, ddpm-64 at 64)")
    ap.add_argument("--model-config", default=None, metavar="FILE.json", help="any U-Net: a JSON object of UNetConfig's fields "
                    "(in_channels, sample_size, base_channels, channel_mult, ...)")
    ap.add_argument("--out", default=None, help="folder for checkpoints and sample grids (default: runs/<data>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its newest valid checkpoint")
    ap.add_argument("--conditional", action="store_true", help="a class-conditional model, trained on the data's labels "
                                                               "(and the null label for --cond-drop of the samples)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    base = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(base, f.name)
        shown = f"{default}" + (f"; digits: {DEFAULTS['digits'][f.name]}" if f.name in DEFAULTS["digits"] else "")
        if f.type in ("bool", bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"{HELP[f.name]} (default: {shown})")
        elif f.name == "schedule":
            ap.add_argument(flag, choices=SCHEDULES, default=None, help=f"{HELP[f.name]} (default: {shown})")
        elif f.name == "prediction":
            ap.add_argument(flag, choices=("epsilon", "v", "sample"), default=None, help=f"{HELP[f.name]} (default: {shown})")
        else:
            ap.add_argument(flag, type=type(default), default=None, metavar=f.name.upper(), help=f"{HELP[f.name]} (default: {shown})")
    ap.add_argument("--debug", action="store_true", help="a Python stack for every error (also FASTDDPM_DEBUG=1)")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
        device = f"cuda:{local}" if cuda else "cpu"
        if cuda:
            torch.cuda.set_device(local)
    builtin = args.data in datasets.DATASETS
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    cfg = TrainConfig(**{**DEFAULTS.get(args.data, {}), **overrides})
    if cfg.sample_every == 0 and "sample_every" not in overrides:
        cfg = TrainConfig(**{**asdict(cfg), "sample_every": cfg.steps})  # a grid at the end
    if args.model and args.model_config:
        raise ValueError("--model-config: given with --model; choose a preset or a config, not both")
    base_cfg = _model_config(args.model_config) if args.model_config else None  # a bad file: refused before the data is read
    if args.model in MODELS and args.model not in SIZED and not builtin:
        raise ValueError(f"--model: {args.model} is sized for the built-in {args.model.split('-small')[0]} images; for your own, "
                         f"choose {' or '.join(sorted(SIZED))}, or --model-config")
    out = Path(args.out or f"runs/{args.data if builtin else Path(args.data).name or 'data'}")
    if args.resume and not (out / "checkpoints").is_dir():
        raise ValueError(f"resume: {out} holds no run to resume (no {out / 'checkpoints'}); check --out, or start a new run "
                         f"without --resume")
    t0 = time.perf_counter()
    source = sources.open_source(args.data, image_size=args.image_size, channels=args.channels, labelled=args.conditional,
                                 workers=args.workers)
    if args.conditional and source.labels is None:
        raise ValueError(f"--conditional: {args.data} has no labels (a folder's classes are its first-level subfolders; an "
                         f".npz's are its 'labels' array)")
    classes = (len(source.classes) if source.classes else int(source.labels.max()) + 1) if args.conditional else None
    if base_cfg is not None:
        preset, mcfg = Path(args.model_config).name, base_cfg
    elif args.model or builtin:
        preset = args.model or args.data
        mcfg = MODELS[preset]
    else:
        preset = next((name for name, c in SIZED.items() if c.sample_size == source.size), None)
        if preset is None:
            raise ValueError(f"--model: no preset is sized for {source.size}x{source.size} images ("
                             f"{', '.join(f'{n}: {c.sample_size}' for n, c in SIZED.items())}); pass --image-size, or "
                             f"--model-config FILE.json for a U-Net of your own")
        mcfg = SIZED[preset]
    if preset in SIZED:  # the paper's architecture, with the data's channels
        mcfg = replace(mcfg, in_channels=source.channels, out_channels=source.channels)
    if args.conditional:
        mcfg = replace(mcfg, num_classes=classes)
    sources.check_matches(source, mcfg.in_channels, mcfg.sample_size, "--data")
    torch.manual_seed(cfg.seed)
    model = UNet(mcfg)
    data = source
    if builtin:  # the built-in sets train exactly as before this option existed (their runs resume)
        data = datasets.load_labelled(args.data) if args.conditional else datasets.load(args.data)
    if world == 1 or int(os.environ.get("RANK", "0")) == 0:
        gflops = forward_flops(model) / 1e9
        sys.stderr.write(f"train: {source.describe(labels=args.conditional)}{', left-right flips' if cfg.hflip else ''}, U-Net "
                         f"'{preset}' ({model.num_parameters():,} parameters, {gflops:.3g} GFLOPs a forward pass per image"
                         f"{f', {mcfg.num_classes} classes, labels dropped for {cfg.cond_drop:g}' if args.conditional else ''}), "
                         f"{cfg.prediction}-prediction, "
                         f"{cfg.steps} steps of batch {cfg.batch_size}{f' x {world} ranks' if world > 1 else ''} on "
                         f"{device or ('cuda' if torch.cuda.is_available() else 'cpu')} -> {out}"
                         f"{' (resuming)' if args.resume else ''}\n")
    trainer = Trainer(model, data, cfg, out_dir=out, device=device, resume=args.resume, workers=args.workers)
    try:
        start = trainer.step
        trainer.fit()
    finally:
        if world > 1:
            dist.destroy_process_group()
    if trainer.rank == 0 and trainer.step > start:
        curve = out / "curve.json"
        old = json.loads(curve.read_text()) if curve.exists() and args.resume else []
        curve.write_text(json.dumps(old + [[s, v] for s, v in trainer.history], separators=(",", ":")) + "\n")
        grids = sorted(out.glob("samples-*.png"))
        tail = [v for s, v in trainer.history if s > trainer.step - cfg.log_every]  # the last logged interval
        loss = (f"loss {sum(tail) / len(tail):.4f} (mean of steps {trainer.step - len(tail) + 1}-{trainer.step}, as last logged)"
                if tail else "no loss logged")
        sys.stderr.write(f"done: steps {start} -> {trainer.step} in {time.perf_counter() - t0:.0f} s, {loss}\n"
                         f"  checkpoints: {trainer.last_checkpoint}\n  samples:     {grids[-1] if grids else '-'}\n"
                         f"  curve:       {curve}\n")
    return trainer


def _model_config(path) -> UNetConfig:
    """A UNetConfig from a JSON object of its fields: unknown names and bad values refused by name."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except OSError as e:
        raise ValueError(f"--model-config: cannot read {path} ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-config: {path} is not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"--model-config: {path} holds a JSON {type(d).__name__}; expected an object of UNetConfig's fields")
    known = {f.name for f in fields(UNetConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"--model-config: {path} names {unknown}, not UNetConfig fields ({', '.join(sorted(known))})")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return UNetConfig(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--model-config: {path}: {e}") from None


if __name__ == "__main__":
    cli.run("python -m fastddpm.train", main)
