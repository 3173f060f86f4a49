"""Many images, sharded, resumable, on one process or many: `generate(model, n, out, ...)`,
the function behind `python -m fastddpm.generate` (fastddpm/generate.py, the command line).

Image k is the image of seed k (default: seeds 0 .. n-1), whatever the shard size, the number
of processes or where a run was interrupted. A shard is sampled in ceil(size / batch) balanced
micro-batches (never larger than the shard, so the work is the images asked for; a part one
short is padded with discarded seeds); the sizes are a pure function of the configuration,
so a rerun, a resumed run or a run on N processes write the same bytes (on the same device
type and batch). Shards (uint8 NHWC .npz, or a folder of PNGs) are written to a temporary
name, fsynced and renamed, each with a sidecar holding its seeds and checksum; the manifest
(JSON) records the configuration at the start and every shard at the end. A rerun with the
same configuration skips the complete shards and redoes missing or damaged ones; a rerun
with another configuration into the same folder is refused, naming every difference.
Processes share no collective: shards are dealt by index (shard i to rank i mod N), each
claimed with a lock file (removed once the shard is written), and whichever process
finishes last completes the manifest. Every argument, the model, the device and --eval's
image size are checked before the folder is created; what a killed run left is removed at
the next start. Memory: one micro-batch of state and the current shard in uint8. The files'
format has one owner, fastddpm.io.samples.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import kernels as K
from ..core import conventions, tuned
from ..core.outputs import label_tensor, seed_tensor
from ..models.loading import load_model, plan_file
from ..io import checkpoint as ckpt
from ..io import stop
from ..io.images import to_uint8
from ..io.samples import (FORMATS, ShardLock, claim_manifest, complete_shard, read_manifest, remove_stale_temps, seed_spec,
                          shard_images, write_shard)
from .sampler import Sampler, rate


# One generation enumerates its seeds, shards and labels in memory (about 40 bytes an image):
# 2**26 images (1,342 sets of 50k, ~2.7 GB of bookkeeping) is the most one call takes; more is
# refused before anything is allocated. Split larger work into seed ranges and folders.
MAX_IMAGES = 2**26


def _too_many(count: int, what: str) -> ValueError:
    return ValueError(f"{what}: {count:,} images is more than one generation enumerates (at most {MAX_IMAGES:,} = 2**26); "
                      f"split the work into --seeds ranges written to separate folders")


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
                if len(seeds) + (b - a + 1) > MAX_IMAGES:
                    raise _too_many(len(seeds) + (b - a + 1), "seeds")
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


def micro_batch(images: int, batch: int) -> int:
    """The micro-batch of a shard of `images`: ceil(images / batch) balanced parts, never more
    than `batch` and never more than the shard, so the work done is the images asked for (up
    to fewer than one image a part of padding). A pure function of the configuration: a rerun,
    a resumed run and a run on N processes use the same sizes, hence write the same bytes."""
    return -(-images // -(-images // batch))


def _checked_seeds(seeds, n) -> list:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_IMAGES:
        raise _too_many(n, "n")
    if seeds is not None and not isinstance(seeds, str) and hasattr(seeds, "__len__") and len(seeds) > MAX_IMAGES:
        raise _too_many(len(seeds), "seeds")
    if seeds is not None:
        seeds = parse_seeds(seeds) if isinstance(seeds, str) else seed_tensor(seeds).tolist()  # a spec, or the Sampler's rule
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds: expected a list of distinct seeds (every image needs its own)")
        if n is not None and _positive(n, "n") != len(seeds):
            raise ValueError(f"n: {n} disagrees with the {len(seeds)} seeds given")
        return seeds
    return list(range(_positive(n, "n")))


def _rank_world(rank, world) -> tuple:
    """This process's rank and the process count (torchrun's RANK / WORLD_SIZE by default)."""
    try:
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE: expected ints in the environment (as torchrun sets them)") from None
    world = _positive(world, "world")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank: expected an int in [0, {world}) (world={world}), got {rank!r}")
    return rank, world


def _device(device) -> torch.device:
    if device is None:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    return K.check_device(device)


def _image_labels(labels, seeds: list, n) -> tuple:
    """(each image's label, or None; the manifest's record of them) for a model with n classes."""
    if n is None:
        if labels is not None:
            raise ValueError("labels: this model is unconditional (no num_classes); pass no labels")
        return None, None
    if labels is None:
        return [s % n for s in seeds], "seed mod num_classes"
    if isinstance(labels, str):
        labels = labels.strip()
        try:
            labels = int(labels) if "," not in labels else [int(v) for v in labels.split(",")]
        except ValueError:
            raise ValueError(f"labels: expected an int or a comma list of ints, got {labels!r}") from None
    one = isinstance(labels, (int, np.integer)) and not isinstance(labels, bool)
    if not one and not isinstance(labels, (bool, float, torch.Tensor)):
        labels = list(labels)
    if not one and not isinstance(labels, (bool, float)) and len(labels) != len(seeds):
        raise ValueError(f"labels: {len(labels)} labels for {len(seeds)} images; give one an image, one int for all, or none "
                         f"(seed mod {n})")
    out = label_tensor(labels, len(seeds), n).tolist()  # the Sampler's rule: ints in [0, n)
    return out, (int(labels) if one else out)


def _check_eval(data: str, shape, kind: str = "shipped", n: int = None):
    """--eval DATA: a known data set whose feature network takes images of this shape (the
    Inception: any size, grey or RGB, and its weights on this machine), or a path to the user's
    real images (fastddpm.io.sources), opened and checked now: the Source, else None. n: the
    images asked for (the Inception's FID needs more than its 2,048 features on each side)."""
    from ..metrics import FEATURES, features, inception, shipped_network_for

    if kind not in FEATURES:
        raise ValueError(f"eval_features: expected one of {FEATURES}, got {kind!r}")
    src = None
    if data not in features.CONFIGS:
        from ..io import sources

        if not isinstance(data, str) or not Path(data).exists():
            raise ValueError(f"eval: expected one of {sorted(features.CONFIGS)} or a path to your real images (a folder, "
                             f"an .npz/.npy, CIFAR batches), got {data!r}")
        src = sources.open_source(data, split="train")
        if kind == "shipped":
            data = shipped_network_for(src.size, src.channels, f"eval: {data}")
    if kind == "inception":
        if shape[0] not in (1, 3):
            raise ValueError(f"eval: the Inception takes grey or RGB images; this model makes {shape[0]} channels")
        if n is not None and n <= inception.DIM:
            raise ValueError(f"eval_features: Inception FID needs more than {inception.DIM} samples (the Inception's "
                             f"feature dimension); --n asks for {n}")
        inception.find()
        from ..metrics import check_inception_reference

        check_inception_reference(None if src is not None else data, "test", src)  # more than 2,048 real images
        return src
    size = features.CONFIGS[data].image_size
    if tuple(shape) != (1, size, size):
        raise ValueError(f"eval: {data}'s feature network takes 1x{size}x{size} images; this model makes "
                         f"{'x'.join(map(str, shape))}")
    return src


def _positive(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def _solver_options(m) -> dict:
    """The options a method has beyond the ones every method has, for the manifest: only those
    it takes, so that a run begun before they existed (DPM-Solver++(2M), ...) still resumes."""
    out = {}
    if m.name in ("unipc", "ipndm"):
        out["order"] = m.order
    if m.name == "unipc":
        out.update(solver_type=m.solver_type, corrector=m.corrector, disable_corrector=list(m.disable_corrector))
    if m.name in ("unipc", "dpm++3m", "sde-dpm++3m"):
        out["lower_order_final"] = m.lower_order_final
    return out


def generate(model, n: int = None, out=None, *, seeds=None, method: str = "ddpm", steps: int = None, spacing: str = None,
             eta: float = 0.0, variance: str = None, clip: bool = None, clipped_eps: bool = None, prediction: str = None,
             labels=None, guidance: float = None, guidance_interval=None, order: int = None, solver_type: str = None,
             corrector: bool = None, disable_corrector=None, lower_order_final: bool = None, shard: int = 1000,
             format: str = "npz", batch: int = 1024, device=None, dtype=None, compile=None, eval: str = None,
             progress: bool = True, rank: int = None, world: int = None, model_flags=None,
             eval_features: str = "shipped", plan=None) -> dict:
    """Generate images into `out` (see the module's docstring); returns the manifest (or,
    while other processes still hold shards, what this one knows of it). spacing, variance,
    clip and prediction left None take the model's conventions (load_model); the manifest
    records the value of each and where it came from. A class-conditional model: labels is an
    int (every image), a sequence (one an image) or None (image of seed s gets class s mod N:
    balanced, and the same wherever the image is drawn); guidance / guidance_interval as the
    Sampler's. model_flags: an OpenAI .pt checkpoint's flags (load_model's flags=), recorded
    in the manifest."""
    # ---- every argument, the model and the device checked before any file is written
    if out is None:
        raise ValueError("out: expected a folder for the shards")
    seeds = _checked_seeds(seeds, n)
    shard, batch = _positive(shard, "shard"), _positive(batch, "batch")
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected True or False, got {progress!r}")
    rank, world = _rank_world(rank, world)
    dev = _device(device)
    ckpt.check_can_create(out, "out")  # created only once the model and the method are checked too
    net, schedule, info = load_model(model, flags=model_flags)
    timesteps, scales, plan_d = None, None, None
    if plan is not None:  # a tuned plan (a file, or one shipped with the model): its method and table, this model only
        plan_d, sets = tuned.arguments(plan_file(plan, info["source"]), method, steps=steps, spacing=spacing, order=order, solver_type=solver_type,
                                       corrector=corrector, lower_order_final=lower_order_final, guidance=guidance)
        method, timesteps, order, solver_type = sets["method"], sets["timesteps"], sets["order"], sets["solver_type"]
        corrector, lower_order_final, scales, guidance = (sets["corrector"], sets["lower_order_final"], sets["scales"],
                                                          sets["guidance"])
        disable_corrector = sets["disable_corrector"] or disable_corrector
    m, used = conventions.of(net).resolve(method, steps, spacing=spacing, eta=eta, variance=variance, clip=clip,
                                          clipped_eps=clipped_eps, prediction=prediction, guidance=guidance,
                                          guidance_interval=guidance_interval, order=order, solver_type=solver_type,
                                          corrector=corrector, disable_corrector=disable_corrector,
                                          lower_order_final=lower_order_final, timesteps=timesteps, scales=scales)
    m = m.checked(schedule.T)
    if plan_d is not None:
        tuned.check_for(plan_d, schedule, m.prediction, model_hash=info["hash"])
    net = net.to(dev)
    sampler = Sampler(net, schedule, method=m.name, steps=m.steps, spacing=m.spacing, eta=m.eta, variance=m.variance, clip=m.clip,
                      clipped_eps=m.clipped_eps, prediction=m.prediction, guidance=m.guidance,
                      guidance_interval=m.guidance_interval, order=m.order, solver_type=m.solver_type, corrector=m.corrector,
                      disable_corrector=m.disable_corrector, lower_order_final=m.lower_order_final, dtype=dtype, compile=compile,
                      progress=False, timesteps=m.timesteps, scales=m.scales)
    image_labels, label_spec = _image_labels(labels, seeds, sampler.num_classes)
    eval_source = None
    if eval is not None:
        eval_source = _check_eval(eval, sampler.shape, eval_features, n=len(seeds))
    out = ckpt.check_writable(out, "out")
    removed = remove_stale_temps(out)

    micro = micro_batch(min(shard, len(seeds)), batch)  # a full shard's; a short last shard's is its own
    config = {
        "model": info["source"], "model_hash": info["hash"], **({"model_flags": info["flags"]} if "flags" in info else {}),
        "schedule": {"T": schedule.T, "betas_sha256":
                  hashlib.sha256(schedule.betas.numpy().tobytes()).hexdigest()[:16]},
        "method": {"name": m.name, "steps": m.steps, "spacing": m.spacing, "eta": m.eta, "variance": m.variance, "clip": m.clip,
                   "clipped_eps": m.clipped_eps, "prediction": m.prediction, "offset": m.offset, "guidance": m.guidance,
                   "guidance_interval": None if m.guidance_interval is None else list(m.guidance_interval),
                   **_solver_options(m), **({"timesteps": list(m.timesteps)} if m.timesteps is not None else {}),
                   **({"scales": [list(r) for r in m.scales]} if m.scales is not None else {})},
        **({"plan": plan_d["plan_hash"]} if plan_d is not None else {}),  # another plan: refused on resume
        "labels": label_spec,
        "conventions": {k: {"value": v, "from": src} for k, (v, src) in used.items()},
        "seeds": seed_spec(seeds), "n": len(seeds), "shard": shard, "format": format, "micro_batch": micro,
        "model_dtype": str(sampler.dtype).replace("torch.", ""), "device_type": dev.type, "image_shape": list(sampler.shape),
    }
    claim_manifest(out, config)

    shards = [seeds[i : i + shard] for i in range(0, len(seeds), shard)]
    mine = [i for i in range(len(shards)) if i % world == rank]
    todo = [i for i in mine if complete_shard(out, i, format) is None]
    total = sum(len(shards[i]) for i in todo)
    who = f"generate{f' rank {rank}/{world}' if world > 1 else ''}"
    say = (lambda text: sys.stderr.write(text)) if progress else (lambda text: None)
    say(f"{who}: {info['source']} ({info['kind']}), {m.label()}, {dev.type}, {sampler.dtype}; {len(seeds)} images "
        f"{tuple(sampler.shape)} in {len(shards)} shards of {shard} (micro-batch {micro}) into {out}\n"
        f"{who}: sampling as " + ", ".join(f"{k} {v!r} ({src})" for k, (v, src) in used.items()) + "\n"
        + (f"{who}: removed what an interrupted run left: {', '.join(removed)}\n" if removed else "")
        + f"{who}: {len(mine) - len(todo)} shards verified, {len(todo)} to do ({total} images)\n")
    done, t0, skipped, written = 0, time.perf_counter(), [], 0
    try:
        with stop.raising() as signals:
            for i in todo:
                lock = ShardLock(out, i)
                if not lock.try_acquire():
                    skipped.append(i)  # another process is writing it
                    continue
                try:
                    if complete_shard(out, i, format) is not None:  # finished by another process meanwhile
                        continue
                    chunk, parts, t_shard = shards[i], [], time.perf_counter()
                    first = i * shard
                    chunk_labels = None if image_labels is None else image_labels[first : first + len(chunk)]
                    mb = micro_batch(len(chunk), batch)
                    for j in range(0, len(chunk), mb):
                        part = chunk[j : j + mb]
                        pad = [part[-1] + 1 + q for q in range(mb - len(part))]  # discarded: fills the micro-batch
                        lab = None if chunk_labels is None else chunk_labels[j : j + mb] + [0] * len(pad)
                        imgs = sampler.run(seeds=torch.tensor(part + pad, dtype=torch.int64), labels=lab, max_batch=mb, progress=False)
                        parts.append(to_uint8(imgs[: len(part)]).permute(0, 2, 3, 1).numpy())
                        done += len(part)
                        el = time.perf_counter() - t0
                        eta_s = (total - done) * el / max(done, 1)
                        say(f"\r{who}: {done}/{total} images  {rate(done, el)}  ETA {int(eta_s) // 60}m{int(eta_s) % 60:02d}s ")
                        signals.check()  # a stop Python swallowed mid-batch is not lost
                    with stop.shielded():  # a shard whose images are all made is written, sidecar and all, before a stop
                        write_shard(out, i, format, np.concatenate(parts), chunk, chunk_labels,
                                    seconds=time.perf_counter() - t_shard)
                    written += 1
                finally:
                    lock.release(remove=True)  # held: nobody else writes this shard now; a later run re-checks it
            signals.check()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the shard in flight is dropped, its lock removed (finally above)
        have = sum(complete_shard(out, i, format) is not None for i in range(len(shards)))
        raise stop.Interrupted(stop.signal_of(e), f"{have} of {len(shards)} shards written into {out}; run the same "
                               f"command to resume") from None
    elapsed = time.perf_counter() - t0  # the summary line, with or without progress:
    sys.stderr.write(("\r" if done and progress else "") + f"{who}: {done} images in {elapsed:.1f} s ({rate(done, elapsed)}), "
                     f"{written} shards written, {len(mine) - len(todo)} verified before" +
                     (f", {len(skipped)} held by another process" if skipped else "") + f"; {out}" + " " * 10 + "\n")
    manifest = read_manifest(out)
    metas = [complete_shard(out, i, format) for i in range(len(shards))]
    if all(x is not None for x in metas):  # the last process to finish completes the manifest
        if not (manifest.get("complete") and manifest.get("shards") == metas):  # (a verified rerun leaves it as it was)
            manifest.update(complete=True, shards=metas, finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
            ckpt.write_atomic(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
            ckpt.fsync_dir(out)
        if eval is not None and rank == 0:
            from .. import metrics

            labels = None if image_labels is None else torch.tensor([v for m in metas for v in m["labels"]])
            report = metrics.evaluate((torch.from_numpy(shard_images(out, s, format)) for s in metas),
                                      None if eval_source is not None else eval, reference=eval_source,
                                      labels=labels if eval_features == "shipped" and eval_source is None else None,
                                      features=eval_features)
            metrics.print_report(report)
            suffix = "-inception" if eval_features == "inception" else ""
            name = f"{eval}-test" if eval_source is None else (Path(eval).stem or "reference")
            (out / f"eval-{name}{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
            manifest["eval"] = report
    return manifest
