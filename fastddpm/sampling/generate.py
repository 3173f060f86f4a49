"""Many images, sharded, resumable, on one process or many: `generate(model, n, out, ...)`,
the function behind `python -m fastddpm.generate` (fastddpm/generate.py, the command line).

Image k is the image of seed k (default: seeds 0 .. n-1), whatever the shard size, the number
of processes or where a run was interrupted: every micro-batch has the same size (the last
padded with discarded seeds), so an image's arithmetic never depends on its neighbours, and
a rerun, a resumed run or a run on N processes write the same bytes (on the same device
type and --batch). Shards of --shard images (uint8 NHWC .npz, or a folder of PNGs) are
written to a temporary name, fsynced and renamed, each with a sidecar holding its seeds and
checksum; the manifest (JSON) records the configuration at the start and every shard at the
end. A rerun with the same configuration skips the complete shards and redoes missing or
damaged ones; a rerun with another configuration into the same folder is refused, naming
the difference. Processes share no collective: shards are dealt by index (shard i to rank
i mod N), each claimed with a lock file, and whichever process finishes last completes the
manifest. Memory: one micro-batch of state and the current shard in uint8. The files'
format has one owner, fastddpm.io.samples.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from ..core import conventions
from ..models.loading import load_model
from ..io import checkpoint as ckpt
from ..io.images import to_uint8
from ..io.samples import (FORMATS, ShardLock, claim_manifest, complete_shard, read_manifest, seed_spec, shard_images,
                          write_atomic, write_shard)
from .sampler import Sampler, rate


def parse_seeds(text: str) -> list:
    """"0-49999" (inclusive), "3,5,9", or a mix "0-9,20-29": distinct int64 seeds, in order."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                i = part.index("-", 1)
                a, b = int(part[:i]), int(part[i + 1 :])
                if b < a:
                    raise ValueError(f"seeds: the range {part} is empty ({b} < {a})")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError as e:
            if str(e).startswith("seeds:"):
                raise
            raise ValueError(f"seeds: expected ranges a-b and ints separated by commas, got {text!r}") from None
    if not seeds:
        raise ValueError("seeds: the list is empty")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {text!r} names some seeds twice (the ranges overlap): every image needs its own seed")
    if min(seeds) < -(2**63) or max(seeds) >= 2**63:
        raise ValueError("seeds: expected seeds in [-2**63, 2**63)")
    return seeds


def _positive(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def generate(model, n: int = None, out=None, *, seeds=None, method: str = "ddpm", steps: int = None, spacing: str = None,
             eta: float = 0.0, variance: str = None, clip: bool = None, clipped_eps: bool = False, prediction: str = None,
             shard: int = 1000,
             format: str = "npz", batch: int = 1024, device=None, dtype=None, compile=None, eval: str = None,
             progress: bool = True, rank: int = None, world: int = None) -> dict:
    """Generate images into `out` (see the module's docstring); returns the manifest (or,
    while other processes still hold shards, what this one knows of it). spacing, variance,
    clip and prediction left None take the model's conventions (load_model); the manifest
    records the value of each and where it came from."""
    # ---- every argument checked before any sampling
    if out is None:
        raise ValueError("out: expected a folder for the shards")
    if seeds is not None:
        seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
        if len(set(seeds)) != len(seeds) or not seeds:
            raise ValueError("seeds: expected a non-empty list of distinct seeds")
        if n is not None and _positive(n, "n") != len(seeds):
            raise ValueError(f"n: {n} disagrees with the {len(seeds)} seeds given")
    else:
        seeds = list(range(_positive(n, "n")))
    shard, batch = _positive(shard, "shard"), _positive(batch, "batch")
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    out = ckpt.check_writable(out, "out")
    if eval is not None:
        from ..metrics import features

        if eval not in features.CONFIGS:
            raise ValueError(f"eval: expected one of {sorted(features.CONFIGS)}, got {eval!r}")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    dev = torch.device(device) if device is not None else torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                                                         if torch.cuda.is_available() else "cpu")

    net, schedule, info = load_model(model)
    m, used = conventions.of(net).resolve(method, steps, spacing=spacing, eta=eta, variance=variance, clip=clip,
                                          clipped_eps=clipped_eps, prediction=prediction)
    m = m.checked(schedule.T)
    net = net.to(dev)
    sampler = Sampler(net, schedule, method=m.name, steps=m.steps, spacing=m.spacing, eta=m.eta, variance=m.variance, clip=m.clip,
                      clipped_eps=m.clipped_eps, prediction=m.prediction, dtype=dtype, compile=compile, progress=False)
    if progress:
        sys.stderr.write("generate: sampling as " + ", ".join(f"{k} {v!r} ({src})" for k, (v, src) in used.items()) + "\n")
    micro = min(batch, len(seeds))  # every micro-batch this size: an image's arithmetic never depends on the sharding
    config = {
        "model": info["source"], "model_hash": info["hash"], "schedule": {"T": schedule.T, "betas_sha256":
                  hashlib.sha256(schedule.betas.numpy().tobytes()).hexdigest()[:16]},
        "method": {"name": m.name, "steps": m.steps, "spacing": m.spacing, "eta": m.eta, "variance": m.variance, "clip": m.clip,
                   "clipped_eps": m.clipped_eps, "prediction": m.prediction, "offset": m.offset},
        "conventions": {k: {"value": v, "from": src} for k, (v, src) in used.items()},
        "seeds": seed_spec(seeds), "n": len(seeds), "shard": shard, "format": format, "micro_batch": micro,
        "model_dtype": str(sampler.dtype).replace("torch.", ""), "device_type": dev.type, "image_shape": list(sampler.shape),
    }
    claim_manifest(out, config)

    shards = [seeds[i : i + shard] for i in range(0, len(seeds), shard)]
    todo = [i for i in range(len(shards)) if i % world == rank and complete_shard(out, i, format) is None]
    total = sum(len(shards[i]) for i in todo)
    done, t0, last, skipped = 0, time.perf_counter(), 0.0, []
    for i in todo:
        lock = ShardLock(out, i)
        if not lock.try_acquire():
            skipped.append(i)  # another process is writing it
            continue
        try:
            if complete_shard(out, i, format) is not None:  # finished by another process meanwhile
                continue
            chunk, parts = shards[i], []
            for j in range(0, len(chunk), micro):
                part = chunk[j : j + micro]
                pad = [part[-1] + 1 + q for q in range(micro - len(part))]  # discarded: fills the micro-batch
                imgs = sampler.run(seeds=torch.tensor(part + pad, dtype=torch.int64), max_batch=micro, progress=False)
                parts.append(to_uint8(imgs[: len(part)]).permute(0, 2, 3, 1).numpy())
                done += len(part)
                if progress and time.perf_counter() - last > 0.5:
                    last = time.perf_counter()
                    el = last - t0
                    eta_s = (total - done) * el / max(done, 1)
                    sys.stderr.write(f"\rgenerate{f' rank {rank}' if world > 1 else ''}: {done}/{total} images  "
                                     f"{rate(done, el)}  ETA {int(eta_s) // 60}m{int(eta_s) % 60:02d}s ")
                    sys.stderr.flush()
            write_shard(out, i, format, np.concatenate(parts), chunk)
        finally:
            lock.release()
    elapsed = time.perf_counter() - t0
    if progress:
        sys.stderr.write(f"\rgenerate{f' rank {rank}' if world > 1 else ''}: {done} images in {elapsed:.1f} s "
                         f"({rate(done, elapsed)}) into {out}" + (f"; {len(skipped)} shards held by another process" if skipped else "")
                         + " " * 10 + "\n")
    manifest = read_manifest(out)
    metas = [complete_shard(out, i, format) for i in range(len(shards))]
    if all(x is not None for x in metas):  # the last process to finish completes the manifest
        manifest.update(complete=True, shards=metas, finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        write_atomic(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        ckpt.fsync_dir(out)
        if eval is not None and rank == 0:
            from .. import metrics

            report = metrics.evaluate((torch.from_numpy(shard_images(out, s, format)) for s in metas), eval)
            metrics.print_report(report)
            (out / f"eval-{eval}-test.json").write_text(json.dumps(report, indent=1) + "\n")
            manifest["eval"] = report
    return manifest
