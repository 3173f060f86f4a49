"""The sample sets on disk, one owner for their format: what `fastddpm.generate` writes and
`fastddpm.eval` reads.

    manifest.json          {"schema", "config", "complete", "shards", ...}; config first, shards once complete
    shard-000000.npz       uint8 NHWC "images", int64 "seeds" (and "labels", class-conditional); or, as PNGs,
                           a folder shard-000000/ of <seed>.png
    shard-000000.json      the shard's sidecar: index, file, seeds (as [first, last] runs), count, sha256 (labels),
                           seconds (the wall time its sampling took; absent in shards written before it was kept)
    .shard-000000.lock     the lock a process holds while it writes that shard

Every file is written to a temporary name, fsynced and renamed. Readers take a generate
folder, a folder of PNGs or an .npz of uint8 images.
"""

import fcntl
import hashlib
import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .checkpoint import write_atomic
from .images import read_png, write_png

FORMATS = ("npz", "png")
SCHEMA = "fastddpm.generate/1"




def seed_spec(seeds: list) -> list:
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


def digest_path(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(path.glob("*.png"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def shard_images(out, shard: dict, fmt: str) -> np.ndarray:
    """The uint8 NHWC images of one shard, in seed order."""
    from ..io.images import read_png

    path = Path(out) / shard["file"]
    if fmt == "npz":
        try:
            with np.load(path) as f:
                return f["images"]
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"SAMPLES: shard {path} is unreadable ({type(e).__name__}: {e}); run generate again into the "
                             f"folder to redo it") from e
    return np.stack([read_png(path / f"{s:020d}.png").permute(1, 2, 0).numpy() for s in expand_seeds(shard["seeds"])])


def expand_seeds(runs) -> list:
    return [s for a, b in runs for s in range(a, b + 1)]


def complete_shard(out: Path, i: int, fmt: str):
    """The sidecar of shard i if its data exists and matches its checksum, else None."""
    side = out / f"shard-{i:06d}.json"
    data = out / shard_name(i, fmt)
    if not side.exists() or not data.exists():
        return None
    try:
        meta = json.loads(side.read_text())
        return meta if digest_path(data) == meta["sha256"] else None
    except (json.JSONDecodeError, KeyError, OSError, ValueError):
        return None


def write_shard(out: Path, i: int, fmt: str, images: np.ndarray, seeds: list, labels: list = None,
                seconds: float = None) -> dict:
    """Shard i: its images and seeds (and a class-conditional model's labels: in the .npz as
    "labels", and in the sidecar for either format). seconds: the wall time its sampling took,
    kept in the sidecar, so a set made in sittings (or on another machine) still says what it cost."""
    name = shard_name(i, fmt)
    if fmt == "npz":
        buf = io.BytesIO()
        extra = {} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}
        np.savez(buf, images=images, seeds=np.asarray(seeds, dtype=np.int64), **extra)
        write_atomic(out / name, buf.getvalue())
    else:
        tmp = out / f".{name}.tmp-{os.getpid()}"
        remove_tree(tmp)
        try:
            tmp.mkdir()
            for img, s in zip(images, seeds):
                p = write_png(torch.from_numpy(img).permute(2, 0, 1), tmp / f"{s:020d}.png")
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
            ckpt.fsync_dir(tmp)
            remove_tree(out / name)  # a damaged earlier attempt
            os.replace(tmp, out / name)
        finally:
            remove_tree(tmp)
    ckpt.fsync_dir(out)
    meta = {"index": i, "file": name, "seeds": seed_spec(seeds), "count": len(seeds), "sha256": digest_path(out / name)}
    if labels is not None:
        meta["labels"] = [int(v) for v in labels]
    if seconds is not None:
        meta["seconds"] = round(float(seconds), 3)
    write_atomic(out / f"shard-{i:06d}.json", (json.dumps(meta) + "\n").encode())
    ckpt.fsync_dir(out)
    return meta


def remove_tree(path: Path) -> None:
    """Remove a shard's PNG folder (or a temporary one), if it exists."""
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()


SHARD_TEMP = re.compile(r"^\.shard-(\d{6})(?:\.npz|\.json)?\.tmp-\d+$")
MANIFEST_TEMP = re.compile(r"^\.manifest(?:\.json)?\.tmp-\d+$")


def remove_stale_temps(out: Path, stale_after: float = 600.0) -> list:
    """Remove what killed or failed runs left: a shard's temporaries when nobody holds that
    shard's lock (so a live writer's are never touched), its lock file, and manifest
    temporaries older than `stale_after` seconds (a manifest write takes milliseconds)."""
    removed = []
    for p in sorted(out.iterdir()):
        m = SHARD_TEMP.match(p.name)
        if m:
            lock = ShardLock(out, int(m.group(1)))
            if lock.try_acquire():
                try:
                    remove_tree(p) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.append(p.name)
                finally:
                    lock.release(remove=True)
        elif MANIFEST_TEMP.match(p.name) and time.time() - p.stat().st_mtime > stale_after:
            p.unlink(missing_ok=True)
            removed.append(p.name)
    for p in sorted(out.glob(".shard-*.lock")):  # locks of finished or killed writers
        i = int(p.name[7:13])
        lock = ShardLock(out, i)
        if lock.try_acquire():
            lock.release(remove=True)
    return removed


def read_manifest(out) -> dict:
    path = Path(out) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"out: {path} is unreadable ({type(e).__name__}: {e})") from e


def claim_manifest(out: Path, config: dict) -> None:
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
    diff = config_differences(theirs, json.loads(json.dumps(config)))
    if diff:
        lines = "".join(f"\n  {k}: {a} in the folder, {b} now" for k, a, b in diff)
        raise ValueError(f"out: {out} holds a generation with another configuration; every difference:{lines}\n"
                         f"use another --out, or the same settings to resume it")


def config_differences(theirs: dict, ours: dict, prefix: str = "") -> list:
    """(key, theirs, ours) for every leaf that differs, nested keys dotted, values in full."""
    out = []
    for k in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(k, "(absent)"), ours.get(k, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((prefix + k, json.dumps(a, ensure_ascii=False), json.dumps(b, ensure_ascii=False)))
    return out


class ShardLock:
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

    def release(self, remove: bool = False):
        """Unlock; with remove, delete the lock file first (while still holding it: a process
        that opened it before then locks a file nobody will use, and re-checks the shard)."""
        if self.fd is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def iter_samples(path, batch: int = 1000):
    """uint8 image batches from a PNG folder, an .npz, or a generate output folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAMPLES: {path} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"SAMPLES: expected a folder or an .npz file, got {path.name}")
        yield npz_images(path)
        return
    manifest = path / "manifest.json"
    if manifest.exists():
        try:
            m = read_manifest(path)
        except ValueError as e:
            raise ValueError(f"SAMPLES: {e}") from e
        if not m.get("complete"):
            raise ValueError(f"SAMPLES: {path} holds an unfinished generation ({len(list(path.glob('shard-*.json')))} of "
                             f"{-(-m['config']['n'] // m['config']['shard'])} shards written); run the same generate command "
                             f"to finish it")
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


def sample_labels(path):
    """The asked-for labels of a generate folder of a class-conditional model (from its shards'
    sidecars, in image order), else None."""
    path = Path(path)
    if not (path.is_dir() and (path / "manifest.json").exists()):
        return None
    shards = read_manifest(path).get("shards", [])
    if not shards or any("labels" not in m for m in shards):
        return None
    return torch.tensor([v for m in shards for v in m["labels"]], dtype=torch.int64)


def npz_images(path) -> torch.Tensor:
    try:
        with np.load(path) as f:
            key = "images" if "images" in f.files else (f.files[0] if len(f.files) == 1 else None)
            if key is None:
                raise ValueError(f"SAMPLES: {path} has arrays {f.files}; expected one named 'images'")
            return torch.from_numpy(np.ascontiguousarray(f[key]))
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        if str(e).startswith("SAMPLES"):
            raise
        raise ValueError(f"SAMPLES: {path} is not a readable .npz ({type(e).__name__}: {e})") from e
