"""Checkpoints that survive a crash: one safetensors file per checkpoint, written to a
temporary file in the same folder, fsynced, renamed into place, the folder fsynced;
the newest two are kept. A write that dies half-way leaves only a temporary file,
which is never read, so the previous checkpoint stays the newest loadable one.

Layout: tensors `model.*`, `ema.*`, `optim.<param index>.<state key>`, `rng.*`;
metadata (strings) `fastddpm` = JSON of step, config and optimizer hyper-parameters.
"""

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

PATTERN = re.compile(r"^step-(\d{9})\.safetensors$")


def path_for(folder, step: int) -> Path:
    return Path(folder) / f"step-{step:09d}.safetensors"


def list_checkpoints(folder) -> list:
    """Finished checkpoints in `folder`, oldest first (temporary files never count)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.match(p.name))


def write(folder, step: int, tensors: dict, meta: dict, keep: int = 2) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = path_for(folder, step)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"fastddpm": json.dumps(meta)})
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable
    finally:
        os.close(fd)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()
    return final


def read(path) -> tuple:
    """(tensors, meta) of one checkpoint; a damaged file is a clear error."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["fastddpm"])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"checkpoint {path} is damaged or not a fastddpm checkpoint ({type(e).__name__}: {e})") from e
    return tensors, meta


def latest(folder):
    found = list_checkpoints(folder)
    return found[-1] if found else None
