"""python -m fastddpm.train: train a DDPM on an offline dataset with the fused kernels.

    python -m fastddpm.train --data digits --steps 4000 --out runs/digits      # CPU, minutes
    python -m fastddpm.train --data fashion-mnist --steps 50000 --out runs/fm  # a GPU
    torchrun --nproc_per_node 2 -m fastddpm.train --data digits --out runs/ddp # DDP
    python -m fastddpm.train ... --resume                                      # continue

Checkpoints (the newest two) go to OUT/checkpoints, EMA sample grids to OUT/samples-*.png.
"""

import argparse
import os
from dataclasses import fields

import torch
import torch.distributed as dist

from . import data as datasets
from .trainer import TrainConfig, Trainer
from .unet import UNet, UNetConfig

MODELS = {  # a U-Net sized for each built-in dataset
    "digits": UNetConfig(in_channels=1, out_channels=1, sample_size=8, base_channels=32, channel_mult=(1, 2),
                         layers_per_block=1, attn_resolutions=(4,), norm_groups=8),
    "fashion-mnist": UNetConfig(in_channels=1, out_channels=1, sample_size=28, base_channels=64, channel_mult=(1, 2, 2),
                                layers_per_block=2, attn_resolutions=(14,), norm_groups=32),
}
DEFAULTS = {"digits": dict(steps=3000, lr=1e-3, warmup=200, ema_decay=0.999), "fashion-mnist": dict(steps=50_000)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastddpm.train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(datasets.DATASETS), default="digits")
    ap.add_argument("--out", default=None, help="folder for checkpoints and sample grids (default runs/<data>)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    ap.add_argument("--device", default=None)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
        else:
            ap.add_argument(flag, type=type(f.default), default=None)
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if cuda else "gloo")
        device = f"cuda:{local}" if cuda else "cpu"
        if cuda:
            torch.cuda.set_device(local)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    cfg = TrainConfig(**{**DEFAULTS[args.data], **overrides})
    if cfg.sample_every == 0 and "sample_every" not in overrides:
        cfg = TrainConfig(**{**cfg.__dict__, "sample_every": cfg.steps})  # a grid at the end
    torch.manual_seed(cfg.seed)
    model = UNet(MODELS[args.data])
    trainer = Trainer(model, datasets.load(args.data), cfg, out_dir=args.out or f"runs/{args.data}", device=device,
                      resume=args.resume)
    try:
        trainer.fit()
    finally:
        if world > 1:
            dist.destroy_process_group()
    return trainer


if __name__ == "__main__":
    main()
