"""python -m fastddpm.generate: many images, sharded, resumable, on one process or many.

    python -m fastddpm.generate --model runs/fm --n 50000 --out samples/fm --method ddim --steps 50
    torchrun --nproc_per_node 8 -m fastddpm.generate --model runs/fm --n 50000 --out samples/fm ...

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
manifest. Memory: one micro-batch of state and the current shard in uint8.
"""

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .images import to_uint8, write_png
from .plan import METHODS, SPACINGS, Method
from .sampler import Sampler, rate

FORMATS = ("npz", "png")
SCHEMA = "fastddpm.generate/1"


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


def _seed_spec(seeds: list) -> list:
    """Seeds as [first, last] runs of consecutive ints: a compact, exact record."""
    runs = []
    for s in seeds:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return runs


def shard_name(i: int, fmt: str) -> str:
    return f"shard-{i:06d}.npz" if fmt == "npz" else f"shard-{i:06d}"


def _digest_path(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(path.glob("*.png"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def shard_images(out, shard: dict, fmt: str) -> np.ndarray:
    """The uint8 NHWC images of one shard, in seed order."""
    from .images import read_png

    path = Path(out) / shard["file"]
    if fmt == "npz":
        with np.load(path) as f:
            return f["images"]
    return np.stack([read_png(path / f"{s:020d}.png").permute(1, 2, 0).numpy() for s in _expand(shard["seeds"])])


def _expand(runs) -> list:
    return [s for a, b in runs for s in range(a, b + 1)]


def _complete(out: Path, i: int, fmt: str):
    """The sidecar of shard i if its data exists and matches its checksum, else None."""
    side = out / f"shard-{i:06d}.json"
    data = out / shard_name(i, fmt)
    if not side.exists() or not data.exists():
        return None
    try:
        meta = json.loads(side.read_text())
        return meta if _digest_path(data) == meta["sha256"] else None
    except (json.JSONDecodeError, KeyError, OSError, ValueError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_shard(out: Path, i: int, fmt: str, images: np.ndarray, seeds: list) -> dict:
    name = shard_name(i, fmt)
    if fmt == "npz":
        import io

        buf = io.BytesIO()
        np.savez(buf, images=images, seeds=np.asarray(seeds, dtype=np.int64))
        _write_atomic(out / name, buf.getvalue())
    else:
        tmp = out / f".{name}.tmp-{os.getpid()}"
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
        tmp.mkdir(exist_ok=True)
        for img, s in zip(images, seeds):
            p = write_png(torch.from_numpy(img).permute(2, 0, 1), tmp / f"{s:020d}.png")
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        ckpt.fsync_dir(tmp)
        old = out / name
        if old.exists():  # a damaged earlier attempt
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        os.replace(tmp, old)
    ckpt.fsync_dir(out)
    meta = {"index": i, "file": name, "seeds": _seed_spec(seeds), "count": len(seeds), "sha256": _digest_path(out / name)}
    _write_atomic(out / f"shard-{i:06d}.json", (json.dumps(meta) + "\n").encode())
    ckpt.fsync_dir(out)
    return meta


def read_manifest(out) -> dict:
    path = Path(out) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"out: {path} is unreadable ({type(e).__name__}: {e})") from e


def _claim_manifest(out: Path, config: dict) -> None:
    """Write the manifest's configuration if the folder has none (atomically, create-if-absent),
    else refuse a different configuration, naming what differs."""
    path = out / "manifest.json"
    if not path.exists():
        tmp = out / f".manifest.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"schema": SCHEMA, "config": config, "complete": False, "shards": []}, indent=1) + "\n")
        try:
            os.link(tmp, path)  # fails if another process got there first: then compare below
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        ckpt.fsync_dir(out)
    theirs = read_manifest(out).get("config", {})
    diff = {k: (theirs.get(k), config.get(k)) for k in sorted(set(theirs) | set(config)) if theirs.get(k) != config.get(k)}
    if diff:
        lines = "; ".join(f"{k}: {str(a)[:60]} in the folder, {str(b)[:60]} now" for k, (a, b) in diff.items())
        raise ValueError(f"out: {out} holds a generation with another configuration ({lines}); use another --out, "
                         f"or the same settings to resume it")


class _ShardLock:
    def __init__(self, out: Path, i: int):
        self.path = out / f".shard-{i:06d}.lock"
        self.fd = None

    def try_acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def generate(model, n: int = None, out=None, *, seeds=None, method: str = "ddpm", steps: int = None, spacing: str = "trailing",
             eta: float = 0.0, variance: str = "large", clip: bool = False, clipped_eps: bool = False, shard: int = 1000,
             format: str = "npz", batch: int = 1024, device=None, dtype=None, compile=None, eval: str = None,
             progress: bool = True, rank: int = None, world: int = None) -> dict:
    """Generate images into `out` (see the module's docstring); returns the manifest (or,
    while other processes still hold shards, what this one knows of it)."""
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
    m = Method(method, steps, spacing, eta, variance, clip, clipped_eps)
    if eval is not None:
        from .metrics import features

        if eval not in features.CONFIGS:
            raise ValueError(f"eval: expected one of {sorted(features.CONFIGS)}, got {eval!r}")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    dev = torch.device(device) if device is not None else torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                                                         if torch.cuda.is_available() else "cpu")

    from .pretrained import load_model  # here: `python -m fastddpm.pretrained` then imports it once

    net, schedule, info = load_model(model)
    m = m.checked(schedule.T)
    net = net.to(dev)
    sampler = Sampler(net, schedule, method=m.name, steps=m.steps, spacing=m.spacing, eta=m.eta, variance=m.variance, clip=m.clip,
                      clipped_eps=m.clipped_eps, dtype=dtype, compile=compile, progress=False)
    micro = min(batch, len(seeds))  # every micro-batch this size: an image's arithmetic never depends on the sharding
    config = {
        "model": info["source"], "model_hash": info["hash"], "schedule": {"T": schedule.T, "betas_sha256":
                  hashlib.sha256(schedule.betas.numpy().tobytes()).hexdigest()[:16]},
        "method": {"name": m.name, "steps": m.steps, "spacing": m.spacing, "eta": m.eta, "variance": m.variance, "clip": m.clip,
                   "clipped_eps": m.clipped_eps},
        "seeds": _seed_spec(seeds), "n": len(seeds), "shard": shard, "format": format, "micro_batch": micro,
        "model_dtype": str(sampler.dtype).replace("torch.", ""), "device_type": dev.type, "image_shape": list(sampler.shape),
    }
    _claim_manifest(out, config)

    shards = [seeds[i : i + shard] for i in range(0, len(seeds), shard)]
    todo = [i for i in range(len(shards)) if i % world == rank and _complete(out, i, format) is None]
    total = sum(len(shards[i]) for i in todo)
    done, t0, last, skipped = 0, time.perf_counter(), 0.0, []
    for i in todo:
        lock = _ShardLock(out, i)
        if not lock.try_acquire():
            skipped.append(i)  # another process is writing it
            continue
        try:
            if _complete(out, i, format) is not None:  # finished by another process meanwhile
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
            _write_shard(out, i, format, np.concatenate(parts), chunk)
        finally:
            lock.release()
    elapsed = time.perf_counter() - t0
    if progress:
        sys.stderr.write(f"\rgenerate{f' rank {rank}' if world > 1 else ''}: {done} images in {elapsed:.1f} s "
                         f"({rate(done, elapsed)}) into {out}" + (f"; {len(skipped)} shards held by another process" if skipped else "")
                         + " " * 10 + "\n")
    manifest = read_manifest(out)
    metas = [_complete(out, i, format) for i in range(len(shards))]
    if all(x is not None for x in metas):  # the last process to finish completes the manifest
        manifest.update(complete=True, shards=metas, finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        _write_atomic(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        ckpt.fsync_dir(out)
        if eval is not None and rank == 0:
            from . import metrics
            from .eval import print_table

            report = metrics.evaluate((torch.from_numpy(shard_images(out, s, format)) for s in metas), eval)
            print_table(report)
            (out / f"eval-{eval}-test.json").write_text(json.dumps(report, indent=1) + "\n")
            manifest["eval"] = report
    return manifest


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fastddpm.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a training run's folder or checkpoint, a diffusers save_pretrained folder, "
                                                   "or a shipped model's name")
    ap.add_argument("--n", type=int, default=None, help="how many images (default: as many as --seeds)")
    ap.add_argument("--out", required=True, help="the output folder (shards, sidecars, manifest.json)")
    ap.add_argument("--seeds", default=None, help="seeds: 'a-b' (inclusive), 'a,b,c' or a mix (default 0 .. n-1)")
    ap.add_argument("--method", default="ddpm", choices=METHODS, help="sampler (default ddpm)")
    ap.add_argument("--steps", type=int, default=None, help="model evaluations (default: T for ddpm, 50 ddim, 20 dpm++)")
    ap.add_argument("--spacing", default="trailing", choices=SPACINGS, help="timestep spacing (default trailing)")
    ap.add_argument("--eta", type=float, default=0.0, help="ddim's η (default 0)")
    ap.add_argument("--variance", default="large", choices=("large", "small", "none"), help="ddpm's σ (default large)")
    ap.add_argument("--clip", action=argparse.BooleanOptionalAction, default=False, help="clamp x̂_0 to [-1, 1] (ddpm, ddim)")
    ap.add_argument("--shard", type=int, default=1000, help="images a shard (default 1000)")
    ap.add_argument("--format", default="npz", choices=FORMATS, help="uint8 NHWC .npz shards, or a folder of PNGs a shard")
    ap.add_argument("--batch", type=int, default=1024, help="micro-batch (default 1024); the same --batch gives the same bytes")
    ap.add_argument("--device", default=None, help="default: cuda (the local rank's) if there is one, else cpu")
    ap.add_argument("--eval", default=None, metavar="DATA", help="measure the shards' quality against DATA's test split at the end")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line")
    args = ap.parse_args(argv)
    kw = {k: v for k, v in vars(args).items() if k not in ("model",)}
    return generate(args.model, **kw)


class _CallableModule(type(sys)):
    """`fastddpm.generate` is this module and, called, the generate function: the package
    then need not import it eagerly (so `python -m fastddpm.generate` runs it once)."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
